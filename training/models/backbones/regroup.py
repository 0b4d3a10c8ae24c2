"""Regrouping a library's model, modules shared and unchanged, into stem -> named stages -> head.

Stages end where resolution drops, so feature extraction and Grad-CAM address a backbone's stages
exactly like a zoo architecture's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from striate.normalization import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

from ..base import ClassifierHead, StriateModel


class Backbone(StriateModel):
    """A pretrained network regrouped as stem -> named stages -> head (modules are shared, not copied)."""

    def __init__(
        self, stem: nn.Module, stages: Sequence[tuple[str, nn.Module]], pre_logits: nn.Sequential, fc: nn.Linear
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleDict(dict(stages))
        self.head = ClassifierHead(pre_logits, fc)

    def train(self, mode: bool = True) -> Backbone:
        """Like nn.Module.train, but a stem or stage whose parameters are all frozen stays in eval mode.

        A frozen body is a fixed feature extractor: its BatchNorm layers keep using (and never
        update) their pretrained running statistics, and its dropout is off.
        """
        super().train(mode)
        if mode:
            for part in (self.stem, *self.stages.values()):
                params = list(part.parameters())
                if params and not any(p.requires_grad for p in params):
                    part.eval()
        return self


def _seq(*mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(*mods)


def _pool_flat() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]


def resnet(m: Any) -> Backbone:
    stem = _seq(m.conv1, m.bn1, m.relu, m.maxpool)
    stages = [(f"stage{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]
    return Backbone(stem, stages, _seq(*_pool_flat()), m.fc)


def mobilenet_v3(m: Any) -> Backbone:
    f = m.features
    ends = _stride_ends(f)
    stem, stages = _split_by_stride(f, ends)
    hidden, act, drop, fc = m.classifier  # Linear(960, 1280), Hardswish, Dropout, Linear(1280, K)
    return Backbone(stem, stages, _seq(*_pool_flat(), hidden, act, drop), fc)


def efficientnet_tv(m: Any) -> Backbone:
    stem, stages = _split_by_stride(m.features, _stride_ends(m.features))
    drop, fc = m.classifier
    return Backbone(stem, stages, _seq(*_pool_flat(), drop), fc)


def vgg(m: Any) -> Backbone:
    f = m.features
    pools = [i for i, layer in enumerate(f) if isinstance(layer, nn.MaxPool2d)]
    stages, start = [], 0
    for n, end in enumerate(pools, 1):
        stages.append((f"stage{n}", _seq(*f[start : end + 1])))
        start = end + 1
    c = m.classifier  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    pre = _seq(m.avgpool, nn.Flatten(1), *c[:-1])
    return Backbone(nn.Identity(), stages, pre, c[-1])


class GoogLeNetInputTransform(nn.Module):
    """torchvision's `transform_input`: ImageNet-normalised input -> the (x - 0.5) / 0.5 the weights expect."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        to_mean, to_std = torch.tensor(INCEPTION_MEAN), torch.tensor(INCEPTION_STD)
        self.register_buffer("scale", (std / to_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - to_mean) / to_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x
        return x * self.scale + self.shift


def googlenet(m: Any) -> Backbone:
    stem = _seq(GoogLeNetInputTransform(), m.conv1, m.maxpool1, m.conv2, m.conv3)
    stages = [
        ("stage1", _seq(m.maxpool2, m.inception3a, m.inception3b)),
        ("stage2", _seq(m.maxpool3, m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e)),
        ("stage3", _seq(m.maxpool4, m.inception5a, m.inception5b)),
    ]
    return Backbone(stem, stages, _seq(*_pool_flat(), m.dropout), m.fc)


def efficientnet_lite_timm(m: Any) -> Backbone:
    b = m.blocks  # 7 block groups at strides 2, 4, 8, 16, 16, 32, 32
    stem = _seq(m.conv_stem, m.bn1, b[0])
    stages = [
        ("stage1", b[1]),
        ("stage2", b[2]),
        ("stage3", _seq(b[3], b[4])),
        ("stage4", _seq(b[5], b[6], m.conv_head, m.bn2)),  # bn2 carries the final ReLU6
    ]
    return Backbone(stem, stages, _seq(*_pool_flat(), nn.Dropout(m.drop_rate)), m.classifier)


def _conv_stride(module: nn.Module) -> int:
    s = 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            stride = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            s *= stride
    return s


def _stride_ends(features: nn.Sequential) -> list[int]:
    """Indices after which the next block lowers resolution (plus the last index)."""
    ends = []
    for i in range(1, len(features)):
        if _conv_stride(features[i]) > 1:
            ends.append(i - 1)
    ends.append(len(features) - 1)
    return ends


def _split_by_stride(features: nn.Sequential, ends: list[int]) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """Stem = blocks up to the first resolution drop after the first conv; one stage per later drop."""
    stem = _seq(*features[: ends[0] + 1])
    stages = []
    for n, (a, b) in enumerate(itertools.pairwise(ends), 1):
        stages.append((f"stage{n}", _seq(*features[a + 1 : b + 1])))
    return stem, stages
