"""Convolution blocks: conv-norm-activation and the depthwise-separable convolution."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LayerFn = Callable[..., nn.Module]


def _same_padding(kernel_size: int | tuple[int, int], dilation: int = 1) -> int | tuple[int, int]:
    """Padding that keeps the size at stride 1 (and gives ceil(n / s) at stride s) for odd kernels."""
    if isinstance(kernel_size, tuple):
        return (dilation * (kernel_size[0] - 1) // 2, dilation * (kernel_size[1] - 1) // 2)
    return dilation * (kernel_size - 1) // 2


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act. The conv has a bias only when there is no norm to absorb it."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm_layer: LayerFn | None = nn.BatchNorm2d,
        act_layer: LayerFn | None = nn.ReLU,
    ) -> None:
        padding = _same_padding(kernel_size, dilation) if padding is None else padding
        bias = norm_layer is None if bias is None else bias
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k conv (one filter per input channel) then pointwise 1x1 conv, then norm/act.

    Weights: in_chs * k * k + in_chs * out_chs, against in_chs * out_chs * k * k for a plain conv
    (Chollet 2017; Howard et al. 2017). `dw_norm_act=True` adds norm + act between the two convs
    (MobileNet style); Xception has none there.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        norm_layer: LayerFn | None = None,
        act_layer: LayerFn | None = None,
        dw_norm_act: bool = False,
    ) -> None:
        super().__init__()
        padding = _same_padding(kernel_size, dilation)
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, padding, dilation, groups=in_chs, bias=bias)
        use_dw = dw_norm_act and norm_layer is not None
        self.bn_dw = norm_layer(in_chs) if use_dw else nn.Identity()
        self.act_dw = act_layer() if dw_norm_act and act_layer is not None else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=bias)
        self.bn = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_dw(self.bn_dw(self.conv_dw(x)))  # spatial filtering, channel by channel
        x = self.act(self.bn(self.conv_pw(x)))  # mixing channels
        return x
