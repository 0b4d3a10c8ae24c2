"""AlexNet (Krizhevsky et al. 2012), with the one-GPU widths of Krizhevsky 2014 (as torchvision).

Stages: `conv1` (conv + max pool), `conv2` (5x5 conv + max pool), `conv3_5` (three 3x3 convs + max
pool; grouped because conv5 narrows 384 -> 256 channels). Widths base_width * (1, 3, 6, 4, 4).
conv1 is the paper's 11x11/4 for inputs >= 128 px, a 5x5/2 from 64 px, a 3x3/1 below; the
overlapping 3x3/2 max pools are skipped when they would leave a map under 2x2. BatchNorm is added
after every conv (`norm_layer=None` for the original; LRN is not used, as in torchvision).

Head: `head="global"` (default) global-average-pools before FC hidden layers of
4096 * base_width / 64 units, so small inputs stay cheap; `head="paper"` keeps the paper's 6x6
pooled map flattened into FC-4096 (61.1M parameters at 224 px / 1000 classes, as torchvision).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from training.blocks import ConvNormAct, LayerFn

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, fc_head, init_weights, scaled, to_hw


class AlexNet(StriateModel):
    def __init__(
        self,
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
        mult = base_width / 64
        w1, w2, w3, w4, w5 = (scaled(c, mult) for c in (64, 192, 384, 256, 256))
        cna = {"norm_layer": norm_layer, "act_layer": act_layer}

        def pooled(layers: dict[str, nn.Module]) -> nn.Sequential:
            if size.fits(3, 2, 0):  # overlapping pooling, as in the paper
                layers["pool"] = nn.MaxPool2d(3, stride=2)
                size.step(3, 2, 0)
            return nn.Sequential(OrderedDict(layers))

        side = min(size.h, size.w)
        k, s, p = (11, 4, 2) if side >= 128 else (5, 2, 2) if side >= 64 else (3, 1, 1)
        conv1 = ConvNormAct(in_chans, w1, k, stride=s, padding=p, **cna)
        size.step(k, s, p)
        self.stem = nn.Identity()
        stages = {"conv1": pooled({"conv": conv1}), "conv2": pooled({"conv": ConvNormAct(w1, w2, 5, **cna)})}
        stages["conv3_5"] = pooled(
            {
                "conv3": ConvNormAct(w2, w3, 3, **cna),
                "conv4": ConvNormAct(w3, w4, 3, **cna),
                "conv5": ConvNormAct(w4, w5, 3, **cna),
            }
        )
        self.stages = nn.ModuleDict(stages)
        self.head = fc_head(w5, num_classes, base_width, head, drop_rate, global_pool, paper_map=6, size=size)
        init_weights(self)


@register_model(family="zoo")
@builds(AlexNet)
def alexnet(**kwargs) -> AlexNet:
    """AlexNet: 5 convs (11x11/4 stem at >=128px), max pools, FC-4096 x2 (+BN; head="paper")."""
    return AlexNet(**kwargs)
