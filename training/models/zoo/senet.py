"""SE-ResNet (Hu et al. 2018, "Squeeze-and-excitation networks"): ResNet with an SE module
(reduction 16) on every residual branch before the addition. Same stems and stages as `resnet`.
"""

from __future__ import annotations

from functools import partial

from training.blocks import BasicBlock, Bottleneck, SqueezeExcite

from ..registry import register_model
from ._common import builds
from .resnet import ResNet


@register_model(family="zoo")
@builds(ResNet, "block", "layers", "attn_layer")
def se_resnet18(reduction: int = 16, **kwargs) -> ResNet:
    """SE-ResNet-18: basic blocks (2, 2, 2, 2) with squeeze-and-excitation."""
    return ResNet(BasicBlock, (2, 2, 2, 2), attn_layer=partial(SqueezeExcite, reduction=reduction), **kwargs)


@register_model(family="zoo")
@builds(ResNet, "block", "layers", "attn_layer")
def se_resnet50(reduction: int = 16, **kwargs) -> ResNet:
    """SE-ResNet-50: bottleneck blocks (3, 4, 6, 3) with squeeze-and-excitation, 28.1M params."""
    return ResNet(Bottleneck, (3, 4, 6, 3), attn_layer=partial(SqueezeExcite, reduction=reduction), **kwargs)
