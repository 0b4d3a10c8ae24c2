"""Weights for a model spec, from local files only, never unpickled.

A state dict is read with `torch.load(weights_only=True)` (training/safe_load.py) or from a
`.safetensors` file, and loaded strictly (every missing, unexpected or misshaped key is named).
A torchvision weights enum (`ResNet18_Weights.IMAGENET1K_V1`) gives labels and preprocessing; its
tensors come from a local file: the one named, or torchvision's own file in the torch hub cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from striate.errors import StriateError
from training.models.backbones.weights import load_strict, read_state_dict

DATA_PARALLEL_PREFIX = "module."  # what nn.DataParallel / DDP put before every key


def read_weights(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from `path` (.safetensors, or a PyTorch file read weights-only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise StriateError(f"weights file not found: {path}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise StriateError(f"cannot read weights file {path} (safetensors): {exc}") from None
    else:
        state = read_state_dict(path, what)
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, what: str) -> None:
    load_strict(model, read_weights(path, what), what, f"weights file {path}")


def torchvision_enum(model_name: str, weights: str) -> Any:
    """The torchvision weights enum named `weights` ("ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1",
    "DEFAULT") for model `model_name`; only its metadata and transforms are used."""
    import torchvision

    try:
        enum_cls = torchvision.models.get_model_weights(model_name)
    except (KeyError, ValueError):
        raise StriateError(f"torchvision has no weights for {model_name!r}") from None
    cls_name, _, member = weights.rpartition(".")
    if cls_name and cls_name != enum_cls.__name__:
        raise StriateError(f"{weights!r} are not weights of torchvision's {model_name} (those are {enum_cls.__name__})")
    if member == "DEFAULT":
        return enum_cls.DEFAULT
    try:
        return enum_cls[member]
    except KeyError:
        names = ", ".join([f"{enum_cls.__name__}.{w.name}" for w in enum_cls] + ["DEFAULT"])
        raise StriateError(f"unknown weights {weights!r} for {model_name}: use one of {names}") from None


def cached_enum_file(enum: Any) -> Path:
    """torchvision's own file for `enum` in the torch hub cache; never downloaded."""
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise StriateError(
            f"no local file for {type(enum).__name__}.{enum.name} (Striate never downloads): pass it with "
            f"--weights, or put {filename} at {cached}"
        )
    return cached
