"""The eval preprocessing and labels that come with a backbone's pretrained weights."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision

from striate.manifest import Preprocessing
from striate.normalization import INCEPTION_MEAN, INCEPTION_STD

from .specs import BackboneSpec, backbone_spec
from .weights import IMAGENET_ALIASES, is_weights_path, torchvision_weights_enum


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard order (from torchvision's weights metadata)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


_INTERP = {"BILINEAR": "bilinear", "BICUBIC": "bicubic", "NEAREST": "nearest"}


def _imagenet_preprocessing(spec: BackboneSpec, weights: str | None) -> tuple[int, int, tuple, tuple, str]:
    """(resize, crop, mean, std, interpolation) the pretrained weights were evaluated with."""
    if spec.source == "timm":
        # EfficientNet-Lite (TF): inputs scaled to [-1, 1] ((x - 127) / 128); timm's pretrained_cfg
        # for tf_efficientnet_lite0: bicubic, crop_pct 0.875 (256 -> 224), mean = std = 0.5.
        return 256, 224, INCEPTION_MEAN, INCEPTION_STD, "bicubic"
    enum_cls = torchvision.models.get_model_weights(spec.native)
    enum = enum_cls.DEFAULT
    if weights is not None and not is_weights_path(weights) and weights.lower() not in IMAGENET_ALIASES:
        enum = torchvision_weights_enum(spec, weights)
    t = enum.transforms()
    interp = _INTERP.get(getattr(t.interpolation, "name", "BILINEAR"), "bilinear")
    return int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std), interp


def backbone_preprocessing(
    name: str, weights: str | None = None, input_size: int | Sequence[int] | None = None, in_chans: int = 3
) -> Preprocessing:
    """The eval preprocessing of a backbone's pretrained weights, scaled to `input_size` if given.

    ImageNet style: resize the shorter side to `resize`, centre-crop `crop`. A smaller input size
    keeps the same resize/crop ratio (e.g. 64 -> resize 73, crop 64). `in_chans=1` averages mean/std.
    """
    spec = backbone_spec(name)
    resize, crop, mean, std, interp = _imagenet_preprocessing(spec, weights)
    size = _size_tuple(input_size) if input_size is not None else (crop, crop)
    if size != (crop, crop):
        resize = round(min(size) * resize / crop)
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(
        color_mode="L" if in_chans == 1 else "RGB",
        resize_mode="shorter",
        resize_size=(resize, resize),
        crop_size=size,
        interpolation=interp,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _size_tuple(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return (input_size, input_size)
    h, w = input_size
    return (int(h), int(w))
