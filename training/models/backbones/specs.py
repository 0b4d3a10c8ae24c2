"""Which backbones exist: one spec per registered name (library, native name, first conv, regrouping)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from striate.errors import StriateError

from .regroup import Backbone


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # registry name
    source: str  # "torchvision" or "timm"
    native: str  # the library's model name
    first_conv: str  # dotted path of the first conv (adapted when in_chans != 3)
    regroup: Callable[[nn.Module], Backbone]
    summary: str


_SPECS: dict[str, BackboneSpec] = {}


def add_spec(spec: BackboneSpec) -> None:
    if spec.name in _SPECS:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _SPECS[spec.name] = spec


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _SPECS:
        raise StriateError(f"unknown backbone {name!r}; known: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def list_backbones() -> list[str]:
    return sorted(_SPECS)


def resolve_backbone_name(name: str) -> str:
    """Accept "resnet18" for "tv_resnet18" (the zoo owns the plain names)."""
    if name in _SPECS:
        return name
    if f"tv_{name}" in _SPECS:
        return f"tv_{name}"
    import difflib

    close = difflib.get_close_matches(name, list(_SPECS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise StriateError(f"unknown backbone {name!r}{hint} (known: {', '.join(sorted(_SPECS))})")
