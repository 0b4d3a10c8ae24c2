"""GoogLeNet (Szegedy et al. 2015, "Going deeper with convolutions"), without auxiliary classifiers.

Stem (convs and max pools) then stages `inception3` (3a, 3b), `inception4` (pool, 4a..4e) and
`inception5` (pool, 5a, 5b), with the paper's table-1 branch widths scaled by base_width / 64 and
true 5x5 convs in the 5x5 branch. BatchNorm after every conv by default (as torchvision; LRN
dropped). The paper stem (7x7/2 conv, pool, 1x1, 3x3, pool: /8) is kept for inputs >= 224 px;
smaller inputs use a 3x3/1 first conv and drop the stem's pools from the front until the map
stays >= 28 px; the stage pools are skipped under 2x2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from training.blocks import ConvNormAct, InceptionModule, LayerFn

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, classifier_head, init_weights, scaled, stem_reductions, to_hw

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
STAGES = {"inception3": ("3a", "3b"), "inception4": ("4a", "4b", "4c", "4d", "4e"), "inception5": ("5a", "5b")}


class GoogLeNet(StriateModel):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int | Sequence[int] = 224,
        base_width: int = 64,
        drop_rate: float = 0.4,
        global_pool: str = "avg",
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_chans, base_width)
        size = FeatureSize(*to_hw(input_size))
        mult = base_width / 64
        cna = {"norm_layer": norm_layer, "act_layer": act_layer}

        def pool() -> nn.Module:
            size.step(3, 2, 1)
            return nn.MaxPool2d(3, stride=2, padding=1)

        k = stem_reductions((size.h, size.w), paper=3, target=28)
        w1, w2, w3 = base_width, scaled(64, mult), scaled(192, mult)
        stem: dict[str, nn.Module] = {}
        if k == 3:
            stem["conv1"] = ConvNormAct(in_chans, w1, 7, stride=2, **cna)
            size.step(7, 2, 3)
        else:
            stem["conv1"] = ConvNormAct(in_chans, w1, 3, **cna)
        if k >= 2:
            stem["pool1"] = pool()
        stem["conv2"] = ConvNormAct(w1, w2, 1, **cna)
        stem["conv3"] = ConvNormAct(w2, w3, 3, **cna)
        if k >= 1:
            stem["pool2"] = pool()
        self.stem = nn.Sequential(OrderedDict(stem))

        in_chs = w3
        stages: dict[str, nn.Module] = {}
        for stage, names in STAGES.items():
            layers: dict[str, nn.Module] = {}
            if stage != "inception3" and size.fits(3, 2, 1):
                layers["pool"] = pool()
            for name in names:
                block = InceptionModule(in_chs, *(scaled(c, mult) for c in INCEPTION[name]), **cna)
                layers[name] = block
                in_chs = block.out_chs
            stages[stage] = nn.Sequential(OrderedDict(layers))
        self.stages = nn.ModuleDict(stages)
        self.head = classifier_head(in_chs, num_classes, global_pool, drop_rate)
        init_weights(self)


@register_model(family="zoo")
@builds(GoogLeNet)
def googlenet(**kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1): 9 inception modules in 3 stages, global pool, dropout 0.4."""
    return GoogLeNet(**kwargs)
