"""Xception (Chollet 2017, "Xception: deep learning with depthwise separable convolutions").

Stem (3x3/2 conv 32, 3x3 conv 64), entry flow as stages `entry1`..`entry3` (residual blocks of
separable convs closed by a 3x3/2 max pool, with 1x1/2 projection shortcuts: 128, 256, 728),
`middle` (8 blocks of three 728 separable convs, identity shortcuts) and `exit` (728 -> 1024 block
with pool, then separable convs 1536 and 2048). Widths scale with base_width / 32. Convs are
zero-padded ("same"), so 299 px gives 10x10 and 224 px 7x7 final maps; the stem conv strides only
for inputs >= 64 px, and a block downsamples only while the map stays >= 2x2.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from training.blocks import ConvNormAct, DepthwiseSeparableConv, LayerFn

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, classifier_head, init_weights, scaled, stem_reductions, to_hw


class XceptionBlock(nn.Module):
    """[relu, sepconv, bn] x reps (+ 3x3/2 max pool), added to a (projected) shortcut (figure 5)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        reps: int,
        stride: int = 1,
        start_with_act: bool = True,
        grow_first: bool = True,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        if out_chs != in_chs or stride != 1:
            self.skip: nn.Module = ConvNormAct(in_chs, out_chs, 1, stride=stride, norm_layer=norm_layer, act_layer=None)
        else:
            self.skip = nn.Identity()
        widths = [in_chs] + ([out_chs] * reps if grow_first else [in_chs] * (reps - 1) + [out_chs])
        layers: dict[str, nn.Module] = {}
        for i in range(reps):
            if i > 0 or start_with_act:
                layers[f"act{i + 1}"] = act_layer()
            layers[f"sepconv{i + 1}"] = DepthwiseSeparableConv(widths[i], widths[i + 1], 3, norm_layer=norm_layer)
        if stride != 1:
            layers["pool"] = nn.MaxPool2d(3, stride=stride, padding=1)
        self.rep = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep(x) + self.skip(x)


class Xception(StriateModel):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int | Sequence[int] = 299,
        base_width: int = 32,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        middle_blocks: int = 8,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_chans, base_width)
        size = FeatureSize(*to_hw(input_size))
        m = base_width / 32
        w64, w128, w256, w728, w1024, w1536, w2048 = (scaled(c, m) for c in (64, 128, 256, 728, 1024, 1536, 2048))
        cna = {"norm_layer": norm_layer, "act_layer": act_layer}
        stem_stride = 2 if stem_reductions((size.h, size.w), paper=1, target=32) else 1
        size.step(3, stem_stride, 1)
        self.stem = nn.Sequential(
            OrderedDict(
                conv1=ConvNormAct(in_chans, base_width, 3, stride=stem_stride, **cna),
                conv2=ConvNormAct(base_width, w64, 3, **cna),
            )
        )
        stages: dict[str, nn.Module] = {
            "entry1": XceptionBlock(w64, w128, 2, size.stride(), start_with_act=False, **cna),
            "entry2": XceptionBlock(w128, w256, 2, size.stride(), **cna),
            "entry3": XceptionBlock(w256, w728, 2, size.stride(), **cna),
            "middle": nn.Sequential(*(XceptionBlock(w728, w728, 3, 1, **cna) for _ in range(middle_blocks))),
        }
        stages["exit"] = nn.Sequential(
            OrderedDict(
                block=XceptionBlock(w728, w1024, 2, size.stride(), grow_first=False, **cna),
                sepconv1=DepthwiseSeparableConv(w1024, w1536, 3, **cna),
                sepconv2=DepthwiseSeparableConv(w1536, w2048, 3, **cna),
            )
        )
        self.stages = nn.ModuleDict(stages)
        self.head = classifier_head(w2048, num_classes, global_pool, drop_rate)
        init_weights(self)


@register_model(family="zoo")
@builds(Xception)
def xception(**kwargs) -> Xception:
    """Xception: entry/middle/exit flows of depthwise-separable convs with residual shortcuts."""
    return Xception(**kwargs)
