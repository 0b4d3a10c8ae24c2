"""Where labels and preprocessing come from: a labels file, the weights' metadata, or flags.

torchvision weights carry `meta["categories"]` and `transforms()`; a timm model carries its
`pretrained_cfg` (read with `timm.data.resolve_data_config`) and timm ships ImageNet's class
names. Flags override any field; a model without metadata needs at least `size`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.normalization import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names in logit order: a JSON list of strings, or a text file with one per line.

    Trailing blank lines are ignored; a blank line between labels is refused, since skipping it
    would shift every label after it onto the wrong logit."""
    path = Path(path)
    if not path.is_file():
        raise StriateError(f"labels file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or _json_list(text):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StriateError(f"labels file {path} is not valid JSON: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise StriateError(f"labels file {path} must hold a JSON list of non-empty strings")
        labels = [x.strip() for x in labels]
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
        if "" in labels:
            line = labels.index("") + 1
            raise StriateError(f"labels file {path}: line {line} is blank (one label per line, in logit order)")
    if not labels:
        raise StriateError(f"labels file {path} holds no labels")
    return labels


def _json_list(text: str) -> bool:
    """A text file that holds a JSON list (a label such as "[unused]" on the first line does not)."""
    if not text.lstrip().startswith("["):
        return False
    try:
        return isinstance(json.loads(text), list)
    except json.JSONDecodeError:
        return False


def enum_labels(enum: Any) -> list[str]:
    return list(enum.meta["categories"])


def timm_labels(model: nn.Module) -> list[str] | None:
    """ImageNet class names (timm's own copy) when the timm model is an ImageNet classifier, else None."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    return [name.split(",")[0].strip() for name in ImageNetInfo(subset).label_descriptions()]


def enum_preprocessing(enum: Any) -> Preprocessing:
    """The eval transform of torchvision weights: resize the shorter side, centre-crop, normalise."""
    t = enum.transforms()
    resize, crop = int(t.resize_size[0]), int(t.crop_size[0])
    interp = getattr(t.interpolation, "value", "bilinear")
    return Preprocessing(
        color_mode="RGB",
        resize_mode="shorter",
        resize_size=(resize, resize),
        crop_size=(crop, crop),
        interpolation=interp if interp in INTERPOLATIONS else "bilinear",
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """The eval transform timm derives from the model's pretrained_cfg (timm's transforms_factory rule)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    channels, height, width = cfg["input_size"]
    mode = cfg.get("crop_mode", "center")
    if mode not in ("center", "squash"):
        raise StriateError(f"timm crop_mode {mode!r} has no Striate equivalent; give --size/--resize instead")
    scale = math.floor(min(height, width) / cfg.get("crop_pct", 1.0))
    interp = cfg.get("interpolation", "bilinear")
    return Preprocessing(
        color_mode="L" if channels == 1 else "RGB",
        resize_mode="shorter" if mode == "center" else "exact",
        resize_size=(scale, scale) if mode == "center" else (height, width),
        crop_size=(height, width),
        interpolation=interp if interp in INTERPOLATIONS else "bilinear",
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def with_overrides(
    base: Preprocessing | None,
    *,
    size: Sequence[int] | None = None,
    resize: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
    color_mode: str | None = None,
) -> Preprocessing:
    """`base` with the given fields replaced. A new `size` keeps the base's resize/crop ratio.

    Without a base: `size` is required; resize defaults to `size` (exact), mean/std to ImageNet's.
    """
    if base is None and size is None:
        raise StriateError("say how images are preprocessed: --size H [W] (and --mean/--std), or weights with metadata")
    fields: dict[str, Any] = (
        dict(base.model_dump())
        if base is not None
        else {
            "color_mode": "RGB",
            "resize_mode": "exact",
            "interpolation": "bilinear",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }
    )
    if size is not None:
        crop = _pair(size, "size")
        if base is not None and resize is None:
            if base.resize_mode == "shorter":
                fields["resize_size"] = (round(min(crop) * base.resize_size[0] / base.crop_size[0]),) * 2
            else:  # exact: each side keeps its resize/crop ratio
                fields["resize_size"] = tuple(
                    round(c * r / b) for c, r, b in zip(crop, base.resize_size, base.crop_size, strict=True)
                )
        else:
            fields["resize_size"] = crop
        fields["crop_size"] = crop
    if resize is not None:
        fields["resize_size"] = _pair(resize, "resize")
        fields["resize_mode"] = "shorter" if len(resize) == 1 else "exact"
    if color_mode is not None:
        fields["color_mode"] = color_mode
    channels = 1 if fields["color_mode"] == "L" else 3
    fields["mean"], fields["std"] = _fit(fields["mean"], channels), _fit(fields["std"], channels)
    if mean is not None:
        fields["mean"] = per_channel(mean, channels, "mean")
    if std is not None:
        fields["std"] = per_channel(std, channels, "std")
    if interpolation is not None:
        fields["interpolation"] = interpolation
    try:
        return Preprocessing(**fields)
    except ValueError as exc:
        raise StriateError(f"bad preprocessing: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}") from None


def _fit(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for `channels` channels: averaged to one, or one repeated to three."""
    if len(values) == channels:
        return tuple(values)
    return (sum(values) / len(values),) * channels


def per_channel(values: Sequence[float], channels: int, flag: str) -> tuple[float, ...]:
    """A statistic given on the command line: one value for every channel, or one per channel."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return (values[0],) * channels
    if len(values) != channels:
        raise StriateError(f"--{flag} takes 1 or {channels} values for {channels}-channel images, got {len(values)}")
    return tuple(values)


def _pair(values: Sequence[int], what: str) -> tuple[int, int]:
    values = [int(v) for v in values]
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise StriateError(f"--{what} takes one or two positive integers (H [W]), got {values}")
    return (values[0], values[-1])
