"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

C1 5x5 conv (6) + S2 2x2 subsampling, C3 5x5 conv (16) + S4 subsampling, C5 5x5 conv (120),
then F6 (84) in the head and the classifier. Stages are named `c1`, `c3`, `c5` (each holding its
subsampling layer). Modern choices, stated: ReLU instead of the scaled tanh (the head may only hold
ReLU), full C3 connectivity, a linear classifier instead of RBF units, and BatchNorm after each conv
(`norm_layer=None` gives the paper's plain 61,706 weights at 32x32 / 10 classes).

Sizing: the convs are "valid" as in the paper for inputs >= 28 px and "same"-padded below (8x8
digits); a subsampling step is skipped when it would leave a map under 2x2; C5's kernel shrinks to
the map so that it always sees the whole map (1x1 output at 32x32, as in the paper).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from training.blocks import ConvNormAct, LayerFn, create_pool2d

from ..base import StriateModel
from ..registry import register_model
from ._common import FeatureSize, builds, check_common, classifier_head, init_weights, scaled, to_hw


class LeNet5(StriateModel):
    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int | Sequence[int] = 32,
        base_width: int = 6,
        drop_rate: float = 0.0,
        pool: str = "avg",
        global_pool: str = "avg",
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        check_common(num_classes, in_chans, base_width)
        size = FeatureSize(*to_hw(input_size))
        mult = base_width / 6
        c1, c3, c5, f6 = base_width, scaled(16, mult), scaled(120, mult), scaled(84, mult)
        pad = 0 if min(size.h, size.w) >= 28 else 2
        cna = {"norm_layer": norm_layer, "act_layer": act_layer}

        def conv_pool(cin: int, cout: int) -> nn.Sequential:
            layers: dict[str, nn.Module] = {"conv": ConvNormAct(cin, cout, 5, padding=pad, **cna)}
            size.step(5, 1, pad)
            if size.fits(2, 2, 0):
                layers["pool"] = create_pool2d(pool, 2)
                size.step(2, 2, 0)
            return nn.Sequential(OrderedDict(layers))

        self.stem = nn.Identity()
        stages: dict[str, nn.Module] = {"c1": conv_pool(in_chans, c1), "c3": conv_pool(c1, c3)}
        kernel = (min(5, size.h), min(5, size.w))  # C5 sees the whole map (5x5 at 32 px)
        stages["c5"] = nn.Sequential(OrderedDict(conv=ConvNormAct(c3, c5, kernel, padding=0, **cna)))
        self.stages = nn.ModuleDict(stages)
        self.head = classifier_head(c5, num_classes, global_pool, drop_rate, hidden=(f6,))
        init_weights(self)


@register_model(family="zoo")
@builds(LeNet5)
def lenet5(**kwargs) -> LeNet5:
    """LeNet-5: conv5-pool, conv5-pool, conv5, FC 84 (ReLU, BN); paper default 1x32x32."""
    return LeNet5(**kwargs)
