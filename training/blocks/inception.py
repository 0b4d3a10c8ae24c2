"""The inception module (Szegedy et al. 2015, "Going deeper with convolutions", figure 2b)."""

from __future__ import annotations

import torch
from torch import nn

from .conv import ConvNormAct, LayerFn


class InceptionModule(nn.Module):
    """Four parallel branches, depth-concatenated:

    1x1 | 1x1 reduce -> 3x3 | 1x1 reduce -> 5x5 | 3x3 max pool -> 1x1 projection.
    Output channels: ch1x1 + ch3x3 + ch5x5 + pool_proj; the spatial size is kept.
    """

    def __init__(
        self,
        in_chs: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn | None = nn.ReLU,
    ) -> None:
        super().__init__()
        cna = {"norm_layer": norm_layer, "act_layer": act_layer}
        self.branch1 = ConvNormAct(in_chs, ch1x1, 1, **cna)
        self.branch2 = nn.Sequential(
            ConvNormAct(in_chs, ch3x3_reduce, 1, **cna), ConvNormAct(ch3x3_reduce, ch3x3, 3, **cna)
        )
        self.branch3 = nn.Sequential(
            ConvNormAct(in_chs, ch5x5_reduce, 1, **cna), ConvNormAct(ch5x5_reduce, ch5x5, 5, **cna)
        )
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvNormAct(in_chs, pool_proj, 1, **cna))
        self.out_chs = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)  # depth concatenation
