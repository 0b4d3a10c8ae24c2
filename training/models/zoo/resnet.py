"""ResNet (He et al. 2016, "Deep residual learning for image recognition").

Stem, then four stages `layer1`..`layer4` of residual blocks (names as torchvision, which
Grad-CAM tutorials use); widths base_width * (1, 2, 4, 8) times the block's expansion. The paper
stem (7x7/2 conv, 3x3/2 max pool) is kept for inputs >= 128 px; from 64 px the conv is a 3x3/1
one followed by the pool; below, a single 3x3/1 conv (CIFAR style). `layer2`..`layer4` each halve
the map while it stays >= 2x2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

from training.blocks import BasicBlock, Bottleneck, ConvNormAct, LayerFn

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, classifier_head, init_weights, stem_reductions, to_hw

Block = type[BasicBlock] | type[Bottleneck]


def resnet_stem(
    in_chans: int, width: int, size: FeatureSize, norm_layer: LayerFn | None, act_layer: LayerFn
) -> nn.Sequential:
    k = stem_reductions((size.h, size.w), paper=2, target=32)
    if k == 2:  # the paper's stem
        conv = ConvNormAct(in_chans, width, 7, stride=2, norm_layer=norm_layer, act_layer=act_layer)
        size.step(7, 2, 3)
    else:
        conv = ConvNormAct(in_chans, width, 3, stride=1, norm_layer=norm_layer, act_layer=act_layer)
    layers: dict[str, nn.Module] = {"conv1": conv}
    if k >= 1:
        layers["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
        size.step(3, 2, 1)
    return nn.Sequential(OrderedDict(layers))


class ResNet(StriateModel):
    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int | Sequence[int] = 224,
        base_width: int = 64,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
        attn_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_chans, base_width)
        size = FeatureSize(*to_hw(input_size))
        self.stem = resnet_stem(in_chans, base_width, size, norm_layer, act_layer)
        kw = {"norm_layer": norm_layer, "act_layer": act_layer, "attn_layer": attn_layer}
        in_chs = base_width
        stages: dict[str, nn.Module] = {}
        for i, depth in enumerate(layers):
            planes = base_width * 2**i
            stride = 1 if i == 0 else size.stride()
            blocks = [block(in_chs, planes, stride, **kw)]
            in_chs = planes * block.expansion
            blocks += [block(in_chs, planes, 1, **kw) for _ in range(depth - 1)]
            stages[f"layer{i + 1}"] = nn.Sequential(*blocks)
        self.stages = nn.ModuleDict(stages)
        self.head = classifier_head(in_chs, num_classes, global_pool, drop_rate)
        init_weights(self)


@register_model(family="zoo")
@builds(ResNet, "block", "layers")
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 11.7M params at 224px/1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(family="zoo")
@builds(ResNet, "block", "layers")
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(family="zoo")
@builds(ResNet, "block", "layers")
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), stride on the 3x3 (v1.5)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
