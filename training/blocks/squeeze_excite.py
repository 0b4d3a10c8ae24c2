"""Squeeze-and-excitation (Hu et al. 2018): reweight channels by a gate computed from their means."""

from __future__ import annotations

import torch
from torch import nn

from .conv import LayerFn


class SqueezeExcite(nn.Module):
    """squeeze (global average) -> FC reduce -> act -> FC expand -> sigmoid -> scale the input.

    The FCs are 1x1 convs with bias: 2 * C * C_r + C_r + C weights, C_r = max(min_channels,
    C // reduction). `min_channels` (8, as timm) keeps narrow layers from a 1- or 2-unit bottleneck;
    set it to 1 for the paper's plain C // r.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_channels: int = 8,
        act_layer: LayerFn = nn.ReLU,
        gate_layer: LayerFn = nn.Sigmoid,
    ) -> None:
        super().__init__()
        rd_channels = max(min_channels, channels // reduction)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # squeeze: one number per channel
        s = self.fc2(self.act(self.fc1(s)))  # excitation
        return x * self.gate(s)
