"""Residual blocks (He et al. 2016): basic (two 3x3) and bottleneck (1x1, 3x3, 1x1).

When the block changes resolution or width, the shortcut is a projection (1x1 conv with stride,
then norm: "option B"); otherwise it is the identity. An optional attention module (e.g.
SqueezeExcite) reweights the residual branch before the addition, as in SENet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv import LayerFn


def projection_shortcut(
    in_chs: int, out_chs: int, stride: int, norm_layer: LayerFn | None = nn.BatchNorm2d
) -> nn.Module | None:
    """1x1 conv (+ norm) matching the residual branch's shape, or None when identity fits."""
    if stride == 1 and in_chs == out_chs:
        return None
    conv = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=norm_layer is None)
    return nn.Sequential(conv, norm_layer(out_chs)) if norm_layer is not None else nn.Sequential(conv)


def _norm(norm_layer: LayerFn | None, chs: int) -> nn.Module:
    return norm_layer(chs) if norm_layer is not None else nn.Identity()


class BasicBlock(nn.Module):
    """3x3 conv, bn, relu, 3x3 conv, bn, (+ attention), add shortcut, relu. out = planes."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
        attn_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        bias = norm_layer is None
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(norm_layer, planes)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(planes, out_chs, 3, padding=1, bias=bias)
        self.bn2 = _norm(norm_layer, out_chs)
        self.attn = attn_layer(out_chs) if attn_layer is not None else nn.Identity()
        self.downsample = projection_shortcut(in_chs, out_chs, stride, norm_layer)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.attn(out)
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, as torchvision's "ResNet v1.5"), 1x1 expand x4, add, relu."""

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
        attn_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        bias = norm_layer is None
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=bias)
        self.bn1 = _norm(norm_layer, planes)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = _norm(norm_layer, planes)
        self.act2 = act_layer()
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=bias)
        self.bn3 = _norm(norm_layer, out_chs)
        self.attn = attn_layer(out_chs) if attn_layer is not None else nn.Identity()
        self.downsample = projection_shortcut(in_chs, out_chs, stride, norm_layer)
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.attn(out)
        return self.act3(out + identity)
