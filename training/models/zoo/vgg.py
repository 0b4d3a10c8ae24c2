"""VGG (Simonyan & Zisserman 2015): stacks of 3x3 convs, each stack closed by a 2x2 max pool.

Stages `conv1`..`conv5` (one per stack), widths base_width * (1, 2, 4, 8, 8). A stack's pool is
skipped when it would leave the map under 2x2 (a 32x32 input ends at 2x2, an 8x8 one too).
BatchNorm follows every conv by default, as torchvision's vgg*_bn (`norm_layer=None` for the
original). Head: `head="global"` (default) global-average-pools then FC hidden layers of
4096 * base_width / 64; `head="paper"` flattens the 7x7 pooled map into FC-4096 (vgg16:
138.4M parameters at 224 px / 1000 classes, as torchvision's vgg16_bn).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from training.blocks import ConvNormAct, LayerFn

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, fc_head, init_weights, to_hw

# Convs per stack: configurations A (VGG-11) and D (VGG-16) of the paper's table 1.
CONFIGS = {"vgg11": (1, 1, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3)}


class VGG(StriateModel):
    def __init__(
        self,
        depths: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int | Sequence[int] = 224,
        base_width: int = 64,
        drop_rate: float = 0.5,
        head: str = "global",
        global_pool: str = "avg",
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_chans, base_width)
        size = FeatureSize(*to_hw(input_size))
        widths = [base_width * m for m in (1, 2, 4, 8, 8)]
        in_chs = in_chans
        stages: dict[str, nn.Module] = {}
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            layers: dict[str, nn.Module] = {}
            for j in range(depth):
                layers[f"conv{j + 1}"] = ConvNormAct(in_chs, width, 3, norm_layer=norm_layer, act_layer=act_layer)
                in_chs = width
            if size.fits(2, 2, 0, ceil_mode=True):
                layers["pool"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
                size.step(2, 2, 0, ceil_mode=True)
            stages[f"conv{i + 1}"] = nn.Sequential(OrderedDict(layers))
        self.stem = nn.Identity()
        self.stages = nn.ModuleDict(stages)
        self.head = fc_head(in_chs, num_classes, base_width, head, drop_rate, global_pool, paper_map=7, size=size)
        init_weights(self)


@register_model(family="zoo")
@builds(VGG, "depths")
def vgg11(**kwargs) -> VGG:
    """VGG-11 (config A): 8 3x3 convs in 5 stacks, FC-4096 x2 (+BN; head="paper")."""
    return VGG(CONFIGS["vgg11"], **kwargs)


@register_model(family="zoo")
@builds(VGG, "depths")
def vgg16(**kwargs) -> VGG:
    """VGG-16 (config D): 13 3x3 convs in 5 stacks, FC-4096 x2 (+BN; head="paper")."""
    return VGG(CONFIGS["vgg16"], **kwargs)
