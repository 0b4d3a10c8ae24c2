"""Name -> builder registry for every architecture and pretrained backbone.

Builders are registered with `@register_model` (duplicates refused) and built with `create_model`,
which records the name and arguments on the model so a checkpoint can rebuild it exactly.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from striate.errors import StriateError

from .base import StriateModel

Builder = Callable[..., StriateModel]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    family: str  # "zoo" (built from blocks) or "backbone" (pretrained torchvision/efficientnet)
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Builder | None = None, *, family: str = "zoo", name: str | None = None):
    """Decorator: register a builder under its function name (or `name`). Duplicates raise."""

    def wrap(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelEntry(key, builder, family, doc[0] if doc else "")
        return builder

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    # Importing the families registers their builders.
    from training import models  # noqa: F401


def list_models(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(k for k, e in _REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise StriateError(f"unknown architecture {name!r}{hint} (see `striate models`)")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> StriateModel:
    """Build a registered model. Common kwargs: num_classes, in_chans, input_size."""
    builder = model_entry(name).builder
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise StriateError(f"architecture {name!r} does not take these arguments: {exc}") from None
    model.arch_name = name
    model.arch_kwargs = dict(kwargs)
    return model
