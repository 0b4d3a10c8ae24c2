"""SE-ResNet (Hu et al. 2018, "Squeeze-and-excitation networks"): ResNet with an SE module
(reduction 16) on every residual branch before the addition. Same stems and stages as `resnet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from training.blocks import BasicBlock, Bottleneck, SqueezeExcite

from ..registry import register_model
from .resnet import ResNet


@register_model(family="zoo")
def se_resnet18(
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: int | Sequence[int] = 224,
    base_width: int = 64,
    drop_rate: float = 0.0,
    reduction: int = 16,
    **kwargs,
) -> ResNet:
    """SE-ResNet-18: basic blocks (2, 2, 2, 2) with squeeze-and-excitation."""
    se = partial(SqueezeExcite, reduction=reduction)
    return ResNet(
        BasicBlock, (2, 2, 2, 2), num_classes, in_chans, input_size, base_width, drop_rate, attn_layer=se, **kwargs
    )


@register_model(family="zoo")
def se_resnet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: int | Sequence[int] = 224,
    base_width: int = 64,
    drop_rate: float = 0.0,
    reduction: int = 16,
    **kwargs,
) -> ResNet:
    """SE-ResNet-50: bottleneck blocks (3, 4, 6, 3) with squeeze-and-excitation, 28.1M params."""
    se = partial(SqueezeExcite, reduction=reduction)
    return ResNet(
        Bottleneck, (3, 4, 6, 3), num_classes, in_chans, input_size, base_width, drop_rate, attn_layer=se, **kwargs
    )
