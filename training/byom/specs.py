"""Model specs: `torchvision:NAME`, `timm:NAME` or `package.module:factory`, built offline.

The library's model is built with random weights (torchvision `weights=None`, timm
`pretrained=False`): nothing is ever downloaded; weights come from a local file (weights.py).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from striate.errors import StriateError

SOURCES = ("torchvision", "timm")  # library prefixes; anything else before ':' is a Python module


@dataclass(frozen=True)
class ModelSpec:
    source: str  # "torchvision", "timm" or "python"
    name: str  # the library's model name, or "package.module:factory"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return self.name if self.source == "python" else f"{self.source}:{self.name}"


def is_model_spec(text: str) -> bool:
    """True for `torchvision:resnet18`, `timm:resnet18`, `pkg.mod:factory`; False for a checkpoint path."""
    head, sep, tail = text.partition(":")
    if not sep or not tail or os.path.exists(text) or "/" in head or "\\" in head or len(head) == 1:
        return False  # "C:\\..." is a Windows path, "runs/x.pt" a file
    return head in SOURCES or (all(p.isidentifier() for p in head.split(".")) and tail.isidentifier())


def parse_model_spec(text: str, kwargs: Mapping[str, Any] | None = None) -> ModelSpec:
    if not is_model_spec(text):
        raise StriateError(f"bad model spec {text!r}: use torchvision:NAME, timm:NAME or package.module:factory")
    head, _, tail = text.partition(":")
    if head in SOURCES:
        return ModelSpec(head, tail, dict(kwargs or {}))
    return ModelSpec("python", text, dict(kwargs or {}))


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _torchvision(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise StriateError(f"unknown torchvision classification model {name!r}{_close(name, known)}")
    if "weights" in kwargs:
        raise StriateError("pass weights as a local file (--weights), not as a builder argument")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise StriateError(f"unknown timm model {name!r}{_close(name.split('.')[0], timm.list_models())}")
    if kwargs.get("pretrained"):
        raise StriateError("timm's pretrained=True downloads; pass the weights as a local file (--weights)")
    return timm.create_model(name, **{**kwargs, "pretrained": False})


def _factory(spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder's packages are importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StriateError(f"cannot import {module_name!r} for model spec {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise StriateError(f"{module_name} has no callable {attr!r} (model spec {spec!r})")
    return factory(**kwargs)


def build_model(spec: ModelSpec) -> nn.Module:
    """The spec's module in eval mode, with the library's random initialisation."""
    try:
        model = {"torchvision": _torchvision, "timm": _timm, "python": _factory}[spec.source](spec.name, spec.kwargs)
    except TypeError as exc:  # a keyword the builder does not take
        raise StriateError(f"cannot build {spec.origin} with {dict(spec.kwargs)}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise StriateError(f"{spec.origin} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
