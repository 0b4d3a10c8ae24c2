"""What every zoo family shares: input-size planning, the classifier head, weight init.

The zoo builds each architecture for the input it will see (8x8 digits up to 224x224 and beyond):
- `stem_reductions` keeps the paper's downsampling stem only when the input is large enough and
  drops its stride-2 steps otherwise (a 32x32 image gets a stride-1 3x3 stem, CIFAR style);
- `FeatureSize` follows the map through the builder so that a stage downsamples only while the
  map stays at least `MIN_FEATURE_SIZE` on each side (a 1x1 map gives Grad-CAM nothing to show).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from striate.errors import StriateError
from training.blocks import GLOBAL_POOLS
from training.blocks import global_pool as make_global_pool

from ..base import ClassifierHead

# Smallest side a stage may downsample a feature map to.
MIN_FEATURE_SIZE = 2

F = TypeVar("F", bound=Callable[..., Any])


def builds(cls: type, *fixed: str) -> Callable[[F], F]:
    """A builder passes its keyword arguments through to `cls`, whose `__init__` states the defaults.

    The builder's signature (what `inspect.signature` and help show) becomes its own named
    parameters plus those of `cls.__init__`, less the `fixed` ones the builder sets itself
    (e.g. ResNet's block and layer counts), so each default is written once, in the class.
    """

    def wrap(builder: F) -> F:
        own = [p for p in inspect.signature(builder).parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own} | set(fixed) | {"self"}
        passed = [p for name, p in inspect.signature(cls.__init__).parameters.items() if name not in taken]
        params = [p.replace(kind=p.KEYWORD_ONLY) for p in (*own, *passed)]
        builder.__signature__ = inspect.Signature(params, return_annotation=cls)  # type: ignore[attr-defined]
        return builder

    return wrap


def to_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """`224` or `(224, 224)` -> (H, W), validated."""
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        hw = (input_size, input_size)
    elif isinstance(input_size, Sequence) and len(input_size) == 2 and all(isinstance(v, int) for v in input_size):
        hw = (int(input_size[0]), int(input_size[1]))
    else:
        raise StriateError(f"input_size must be an int or (H, W), got {input_size!r}")
    if min(hw) < 1:
        raise StriateError(f"input_size must be positive, got {input_size!r}")
    return hw


def check_common(num_classes: int, in_chans: int, base_width: int) -> None:
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise StriateError(f"{name} must be a positive integer, got {value!r}")


def stem_reductions(hw: tuple[int, int], paper: int, target: int = 32) -> int:
    """How many of the paper stem's `paper` stride-2 steps to keep: as many as leave >= `target` px."""
    k, side = 0, min(hw)
    while k < paper and side / 2 ** (k + 1) >= target:
        k += 1
    return k


def scaled(channels: int, mult: float) -> int:
    """A paper channel count scaled by the width multiplier (base_width / paper base width)."""
    return max(1, round(channels * mult))


@dataclass
class FeatureSize:
    """The (H, W) of the feature map at the current point of a builder."""

    h: int
    w: int
    min_size: int = MIN_FEATURE_SIZE

    @staticmethod
    def _out(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
        span = n + 2 * p - k
        return (math.ceil(span / s) if ceil_mode else span // s) + 1

    def after(self, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> tuple[int, int]:
        return self._out(self.h, k, s, p, ceil_mode), self._out(self.w, k, s, p, ceil_mode)

    def fits(self, k: int = 3, s: int = 2, p: int = 1, ceil_mode: bool = False) -> bool:
        """Would this conv/pool keep both sides >= min_size?"""
        return min(self.after(k, s, p, ceil_mode)) >= self.min_size

    def step(self, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> None:
        self.h, self.w = self.after(k, s, p, ceil_mode)

    def stride(self) -> int:
        """2 (and halve the size) if a padded stride-2 step keeps the map >= min_size, else 1."""
        if self.fits(3, 2, 1):
            self.step(3, 2, 1)
            return 2
        return 1


def classifier_head(
    in_features: int,
    num_classes: int,
    pool: str = "avg",
    drop_rate: float = 0.0,
    hidden: Sequence[int] = (),
    pool_size: int = 1,
) -> ClassifierHead:
    """Global pool, flatten, then for each hidden width Linear-ReLU-Dropout (AlexNet/VGG), then fc.

    With no hidden layer, dropout (if any) sits right before fc, as in GoogLeNet and timm.
    """
    if pool not in GLOBAL_POOLS:
        raise StriateError(f"unknown global_pool {pool!r}: expected one of {sorted(GLOBAL_POOLS)}")
    layers: list[nn.Module] = [make_global_pool(pool, pool_size), nn.Flatten(1)]
    width = in_features * pool_size * pool_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if drop_rate > 0:
            layers.append(nn.Dropout(drop_rate))
        width = h
    if not hidden and drop_rate > 0:
        layers.append(nn.Dropout(drop_rate))
    return ClassifierHead(nn.Sequential(*layers), nn.Linear(width, num_classes))


def fc_head(
    in_chs: int,
    num_classes: int,
    base_width: int,
    head: str,
    drop_rate: float,
    pool: str,
    paper_map: int,
    size: FeatureSize,
) -> ClassifierHead:
    """The AlexNet/VGG classifier: two FC hidden layers (ReLU, dropout) after global or paper pooling.

    "paper" flattens the paper's final `paper_map` x `paper_map` map into the FC layers, so it needs
    the paper's input size (an adaptive pool that resamples another size does not export to ONNX).
    """
    hidden = scaled(4096, base_width / 64)
    if head == "global":
        return classifier_head(in_chs, num_classes, pool, drop_rate, (hidden, hidden))
    if head != "paper":
        raise StriateError(f"unknown head {head!r}: expected 'global' or 'paper'")
    if (size.h, size.w) != (paper_map, paper_map):
        raise StriateError(
            f"head='paper' needs a {paper_map}x{paper_map} final map (224 px input), "
            f"this input gives {size.h}x{size.w}; use head='global'"
        )
    return classifier_head(in_chs, num_classes, pool, drop_rate, (hidden, hidden), pool_size=paper_map)


def init_weights(model: nn.Module) -> None:
    """He init for convs (fan_out, as torchvision), BN to identity, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
