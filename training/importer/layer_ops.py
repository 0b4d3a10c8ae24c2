"""Head rules for layers: pooling, reductions, Gemm/MatMul, Conv, LayerNorm and BatchNorm (see ops.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .ops import HeadNode, Step, Tensor, axes_of, only_first, rest, rule


def _global_avg(node: HeadNode) -> Step:
    src = node.in_shapes[0]
    dims = tuple(range(2, len(src)))
    count = math.prod(src[2:])
    return Step(
        lambda xs: xs[0].mean(dim=dims, keepdim=True),
        lambda xs, y, g: [g.expand(-1, *rest(src)) / count],
    )


def _global_max(node: HeadNode) -> Step:
    """Max over all spatial cells; the first maximal cell gets the gradient (torch's choice)."""
    src = node.in_shapes[0]
    cells = math.prod(src[2:])
    positions = torch.arange(cells)

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        flat = xs[0].flatten(2)
        winner = (flat.argmax(-1, keepdim=True) == positions).to(g.dtype)
        return [(winner * g.flatten(2)).reshape(-1, *rest(src))]

    return Step(lambda xs: xs[0].flatten(2).amax(-1).reshape(-1, *rest(node.out_shape)), vjp)


@rule("GlobalAveragePool")
def _gap(node: HeadNode) -> Step:
    only_first(node)
    return _global_avg(node)


@rule("GlobalMaxPool")
def _gmp(node: HeadNode) -> Step:
    only_first(node)
    return _global_max(node)


def _covers_input(node: HeadNode) -> bool:
    src = node.in_shapes[0]
    kernel = list(node.attr("kernel_shape") or [])
    pads = list(node.attr("pads") or [0] * (2 * len(kernel)))
    return kernel == list(src[2:]) and not any(pads) and node.attr("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")


@rule("MaxPool")
def _max_pool(node: HeadNode) -> Step:
    only_first(node)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.refuse("its indices output is used")
    if not _covers_input(node):
        raise node.refuse("only a max pool over the whole map (a global pool) is supported in the head")
    return _global_max(node)


@rule("AveragePool")
def _avg_pool(node: HeadNode) -> Step:
    only_first(node)
    if _covers_input(node):
        return _global_avg(node)
    src, out = node.in_shapes[0], node.out_shape
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides") or [1] * len(kernel))
    pads = list(node.attr("pads") or [0] * (2 * len(kernel)))
    if len(kernel) != 2 or any(pads) or node.attr("ceil_mode", 0) or node.attr("auto_pad", b"NOTSET") != b"NOTSET":
        raise node.refuse("only 2-D average pools without padding or ceil mode are supported")
    channels = src[1]
    weight = torch.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=torch.float64)
    # conv_transpose2d spreads each output cell's gradient over its window; cells past the last
    # window get none, which F.pad adds back.
    covered = [(o - 1) * s + k for o, s, k in zip(out[2:], strides, kernel, strict=True)]
    pad = [0, src[3] - covered[1], 0, src[2] - covered[0]]

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        spread = F.conv_transpose2d(g, weight.to(g.dtype), stride=strides, groups=channels)
        return [F.pad(spread, pad)]

    return Step(lambda xs: F.avg_pool2d(xs[0], kernel, strides), vjp)


@rule("ReduceMean", "ReduceSum", "ReduceMax")
def _reduce(node: HeadNode) -> Step:
    only_first(node)
    src = node.in_shapes[0]
    axes = axes_of(node, len(src))
    if axes is None:
        raise node.refuse("it reduces every axis, the batch included")
    keep = bool(node.attr("keepdims", 1))
    kept = [1 if i in axes else d for i, d in enumerate(src)]
    count = math.prod(src[a] for a in axes)

    def forward(xs: list[Tensor]) -> Tensor:
        x = xs[0]
        if node.op_type == "ReduceMean":
            return x.mean(dim=axes, keepdim=keep)
        if node.op_type == "ReduceSum":
            return x.sum(dim=axes, keepdim=keep)
        return x.amax(dim=axes, keepdim=keep)

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        g = g.reshape(-1, *kept[1:])
        if node.op_type == "ReduceMean":
            return [g.expand(-1, *rest(src)) / count]
        if node.op_type == "ReduceSum":
            return [g.expand(-1, *rest(src))]
        ties = (xs[0] == y.reshape(-1, *kept[1:])).to(g.dtype)  # torch's amax: ties share evenly
        return [ties * g / ties.sum(dim=axes, keepdim=True)]

    return Step(forward, vjp)


@rule("Gemm")
def _gemm(node: HeadNode) -> Step:
    only_first(node)
    if node.attr("transA", 0):
        raise node.refuse("transA=1 is not supported")
    b = torch.from_numpy(node.const(1).astype(np.float32))
    b = b.t() if node.attr("transB", 0) else b
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    c = node.const(2)
    bias = None if c is None else torch.from_numpy(beta * c.astype(np.float32))

    def forward(xs: list[Tensor]) -> Tensor:
        y = (xs[0] @ b.to(xs[0].dtype)) * alpha
        return y if bias is None else y + bias.to(y.dtype)

    return Step(forward, lambda xs, y, g: [(g @ b.t().to(g.dtype)) * alpha, None, None])


@rule("MatMul")
def _matmul(node: HeadNode) -> Step:
    only_first(node)
    w = node.const(1)
    if w is None or w.ndim != 2:
        raise node.refuse("only a product with a constant 2-D matrix on the right is supported")
    weight = torch.from_numpy(w.astype(np.float32))
    return Step(
        lambda xs: xs[0] @ weight.to(xs[0].dtype),
        lambda xs, y, g: [g @ weight.t().to(g.dtype), None],
    )


@rule("Conv")
def _conv(node: HeadNode) -> Step:
    """A 2-D convolution (a 1x1 classifier conv, or a target tensor inside the body): its VJP is the
    transposed convolution with the same weights."""
    only_first(node)
    w = node.const(1)
    src, out = node.in_shapes[0], node.out_shape
    pads = list(node.attr("pads") or [0, 0, 0, 0])
    if w is None or w.ndim != 4 or len(pads) != 4 or pads[:2] != pads[2:]:
        raise node.refuse("only 2-D convolutions with constant weights and symmetric padding are supported")
    if node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise node.refuse("auto_pad SAME is not supported")
    weight = torch.from_numpy(w.astype(np.float32))
    b = node.const(2)
    bias = None if b is None else torch.from_numpy(b.astype(np.float32))
    stride = list(node.attr("strides") or [1, 1])
    dilation = list(node.attr("dilations") or [1, 1])
    groups = int(node.attr("group", 1))
    padding = pads[:2]
    extra = [
        src[2 + i] - ((out[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1)
        for i in range(2)
    ]

    def forward(xs: list[Tensor]) -> Tensor:
        x = xs[0]
        return F.conv2d(
            x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation, groups
        )

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        gx = F.conv_transpose2d(g, weight.to(g.dtype), None, stride, padding, extra, groups, dilation)
        return [gx, None, None]

    return Step(forward, vjp)


@rule("LayerNormalization")
def _layer_norm(node: HeadNode) -> Step:
    only_first(node)
    src = node.in_shapes[0]
    axis = int(node.attr("axis", -1)) % len(src)
    if axis == 0:
        raise node.refuse("it normalises across the batch axis")
    eps = float(node.attr("epsilon", 1e-5))
    dims = list(range(axis, len(src)))
    scale = torch.from_numpy(node.const(1).astype(np.float32))
    bias = None if node.const(2) is None else torch.from_numpy(node.const(2).astype(np.float32))

    def normalised(x: Tensor) -> tuple[Tensor, Tensor]:
        mu = x.mean(dim=dims, keepdim=True)
        rstd = torch.rsqrt(((x - mu) ** 2).mean(dim=dims, keepdim=True) + eps)
        return (x - mu) * rstd, rstd

    def forward(xs: list[Tensor]) -> Tensor:
        xhat, _ = normalised(xs[0])
        y = xhat * scale.to(xhat.dtype)
        return y if bias is None else y + bias.to(y.dtype)

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        xhat, rstd = normalised(xs[0])
        gh = g * scale.to(g.dtype)
        mean_gh = gh.mean(dim=dims, keepdim=True)
        mean_ghx = (gh * xhat).mean(dim=dims, keepdim=True)
        return [rstd * (gh - mean_gh - xhat * mean_ghx), None, None]

    return Step(forward, vjp)


@rule("BatchNormalization")
def _batch_norm(node: HeadNode) -> Step:
    only_first(node)
    scale, bias, mean, var = (node.const(i).astype(np.float64) for i in range(1, 5))
    eps = float(node.attr("epsilon", 1e-5))
    factor = scale / np.sqrt(var + eps)
    view = (1, -1) + (1,) * (len(node.in_shapes[0]) - 2)
    mul = torch.from_numpy(factor.astype(np.float32)).reshape(view)
    add = torch.from_numpy((bias - mean * factor).astype(np.float32)).reshape(view)
    return Step(
        lambda xs: xs[0] * mul.to(xs[0].dtype) + add.to(xs[0].dtype),
        lambda xs, y, g: [g * mul.to(g.dtype), None, None, None, None],
    )
