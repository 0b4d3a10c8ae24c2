"""The ONNX ops a classifier head uses, each as a torch forward and its vector-Jacobian product.

`RULES[op_type](node)` checks one node of the head and returns its `Step`: `forward(xs)` computes
the node's (first) output from its inputs, `vjp(xs, y, g)` the gradient of each input given the
output's gradient `g` (None for inputs that are constants). Both are plain torch ops, so the same
code runs eagerly (autograd of `forward` is the yardstick of `vjp` in the tests) and traces into
the explain graph. Shapes are the probe's static ones; axis 0 is always the batch, which may be
anything at run time (every target of every image is one row).

Conventions at non-differentiable points are torch's, so that maps match pytorch-grad-cam on the
source model: ReLU passes the gradient where x > 0, Clip (ReLU6) strictly inside its bounds,
HardSwish as torch's hardswish_backward, a global max pool to the first maximal cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper

from striate.errors import StriateError

Tensor = torch.Tensor
Shape = tuple[int, ...]


class NotDifferentiable(StriateError):
    """A head node Striate cannot write the backward pass of; the message names the op and node."""


@dataclass
class HeadNode:
    """One node of the head, with what the probe learned about it."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    in_shapes: list[Shape | None]
    out_shape: Shape
    diff: list[bool]  # input i depends on the target tensor (and is float): it gets a gradient
    consts: dict[int, np.ndarray] = field(default_factory=dict)  # values of the other inputs

    def refuse(self, why: str) -> NotDifferentiable:
        return NotDifferentiable(f"cannot differentiate {self.op_type} node {self.name!r}: {why}")

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def const(self, i: int) -> np.ndarray | None:
        return self.consts.get(i) if i < len(self.inputs) and self.inputs[i] else None


@dataclass
class Step:
    forward: Callable[[list[Tensor]], Tensor]
    vjp: Callable[[list[Tensor], Tensor, Tensor], list[Tensor | None]]


RULES: dict[str, Callable[[HeadNode], Step]] = {}


def rule(*op_types: str):
    def wrap(fn: Callable[[HeadNode], Step]) -> Callable[[HeadNode], Step]:
        for op in op_types:
            RULES[op] = fn
        return fn

    return wrap


def node_attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rest(shape: Shape) -> list[int]:
    return [int(d) for d in shape[1:]]


def _only_first(node: HeadNode) -> None:
    if not node.diff[0] or any(node.diff[1:]):
        raise node.refuse("only its first input may depend on the target tensor")


def _axes(node: HeadNode, rank: int, input_index: int = 1) -> list[int] | None:
    axes = node.attr("axes")
    if axes is None and node.const(input_index) is not None:
        axes = node.const(input_index).tolist()
    if axes is None:
        return None
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes:
        raise node.refuse("it works across the batch axis")
    return axes


def _unbroadcast(g: Tensor, shape: Shape, out: Shape) -> Tensor:
    """Sum `g` (shaped like `out`) over the axes along which an input of `shape` was broadcast."""
    axes = [i for i in range(1, len(out)) if shape[i] == 1 and out[i] != 1]
    return g.sum(dim=axes, keepdim=True) if axes else g


@rule("Identity", "Dropout")
def _identity(node: HeadNode) -> Step:
    _only_first(node)
    return Step(lambda xs: xs[0], lambda xs, y, g: [g])


@rule("Cast")
def _cast(node: HeadNode) -> Step:
    if node.attr("to") != 1:  # FLOAT
        raise node.refuse("it casts to a type other than float32")
    return _identity(node)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(node: HeadNode) -> Step:
    _only_first(node)
    src, out = node.in_shapes[0], node.out_shape
    if src is None or len(out) == 0 or out[0] != src[0]:
        raise node.refuse(f"it moves the batch axis ({list(src or ())} -> {list(out)})")
    return Step(lambda xs: xs[0].reshape(-1, *_rest(out)), lambda xs, y, g: [g.reshape(-1, *_rest(src))])


@rule("Transpose")
def _transpose(node: HeadNode) -> Step:
    _only_first(node)
    perm = list(node.attr("perm") or reversed(range(len(node.out_shape))))
    if perm[0] != 0:
        raise node.refuse(f"perm {perm} moves the batch axis")
    inverse = list(np.argsort(perm))
    return Step(lambda xs: xs[0].permute(*perm), lambda xs, y, g: [g.permute(*inverse)])


def _global_avg(node: HeadNode) -> Step:
    src = node.in_shapes[0]
    dims = tuple(range(2, len(src)))
    count = math.prod(src[2:])
    return Step(
        lambda xs: xs[0].mean(dim=dims, keepdim=True),
        lambda xs, y, g: [g.expand(-1, *_rest(src)) / count],
    )


def _global_max(node: HeadNode) -> Step:
    """Max over all spatial cells; the first maximal cell gets the gradient (torch's choice)."""
    src = node.in_shapes[0]
    cells = math.prod(src[2:])
    positions = torch.arange(cells)

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        flat = xs[0].flatten(2)
        winner = (flat.argmax(-1, keepdim=True) == positions).to(g.dtype)
        return [(winner * g.flatten(2)).reshape(-1, *_rest(src))]

    return Step(lambda xs: xs[0].flatten(2).amax(-1).reshape(-1, *_rest(node.out_shape)), vjp)


@rule("GlobalAveragePool")
def _gap(node: HeadNode) -> Step:
    _only_first(node)
    return _global_avg(node)


@rule("GlobalMaxPool")
def _gmp(node: HeadNode) -> Step:
    _only_first(node)
    return _global_max(node)


def _covers_input(node: HeadNode) -> bool:
    src = node.in_shapes[0]
    kernel = list(node.attr("kernel_shape") or [])
    pads = list(node.attr("pads") or [0] * (2 * len(kernel)))
    return kernel == list(src[2:]) and not any(pads) and node.attr("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")


@rule("MaxPool")
def _max_pool(node: HeadNode) -> Step:
    _only_first(node)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.refuse("its indices output is used")
    if not _covers_input(node):
        raise node.refuse("only a max pool over the whole map (a global pool) is supported in the head")
    return _global_max(node)


@rule("AveragePool")
def _avg_pool(node: HeadNode) -> Step:
    _only_first(node)
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
    _only_first(node)
    src = node.in_shapes[0]
    axes = _axes(node, len(src))
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
            return [g.expand(-1, *_rest(src)) / count]
        if node.op_type == "ReduceSum":
            return [g.expand(-1, *_rest(src))]
        ties = (xs[0] == y.reshape(-1, *kept[1:])).to(g.dtype)  # torch's amax: ties share evenly
        return [ties * g / ties.sum(dim=axes, keepdim=True)]

    return Step(forward, vjp)


@rule("Gemm")
def _gemm(node: HeadNode) -> Step:
    _only_first(node)
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
    _only_first(node)
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
    _only_first(node)
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


@rule("Add", "Sub", "Mul", "Div")
def _arithmetic(node: HeadNode) -> Step:
    out = node.out_shape
    shapes = [s if s is not None else () for s in node.in_shapes]
    for i, is_diff in enumerate(node.diff):
        if is_diff and len(shapes[i]) != len(out):
            raise node.refuse("an input depending on the target tensor is broadcast over the batch axis")
    op = node.op_type

    def forward(xs: list[Tensor]) -> Tensor:
        a, b = xs
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](a, b)

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        a, b = xs
        if op == "Add":
            grads = [g, g]
        elif op == "Sub":
            grads = [g, -g]
        elif op == "Mul":
            grads = [g * b, g * a]
        else:
            grads = [g / b, -g * a / (b * b)]
        return [_unbroadcast(gi, shapes[i], out) if node.diff[i] else None for i, gi in enumerate(grads)]

    return Step(forward, vjp)


def _elementwise(forward: Callable[[Tensor], Tensor], slope: Callable[[Tensor, Tensor], Tensor]):
    """A one-input op whose Jacobian is diagonal: slope(x, y) is dy/dx per element."""

    def build(node: HeadNode) -> Step:
        _only_first(node)
        return Step(lambda xs: forward(xs[0]), lambda xs, y, g: [g * slope(xs[0], y)] + [None] * (len(xs) - 1))

    return build


def _hardswish_slope(x: Tensor, y: Tensor) -> Tensor:  # torch's hardswish_backward
    return torch.where(x < -3, torch.zeros_like(x), torch.where(x <= 3, x / 3 + 0.5, torch.ones_like(x)))


RULES["Relu"] = _elementwise(F.relu, lambda x, y: (x > 0).to(x.dtype))
RULES["Sigmoid"] = _elementwise(torch.sigmoid, lambda x, y: y * (1 - y))
RULES["Tanh"] = _elementwise(torch.tanh, lambda x, y: 1 - y * y)
RULES["Exp"] = _elementwise(torch.exp, lambda x, y: y)
RULES["Neg"] = _elementwise(torch.neg, lambda x, y: -torch.ones_like(x))
RULES["Sqrt"] = _elementwise(torch.sqrt, lambda x, y: 0.5 / y)
RULES["Reciprocal"] = _elementwise(torch.reciprocal, lambda x, y: -y * y)
RULES["HardSwish"] = _elementwise(F.hardswish, _hardswish_slope)
RULES["Erf"] = _elementwise(torch.erf, lambda x, y: (2 / math.sqrt(math.pi)) * torch.exp(-x * x))


@rule("LeakyRelu")
def _leaky(node: HeadNode) -> Step:
    alpha = float(node.attr("alpha", 0.01))
    return _elementwise(
        lambda x: F.leaky_relu(x, alpha), lambda x, y: torch.where(x > 0, torch.ones_like(x), torch.full_like(x, alpha))
    )(node)


@rule("HardSigmoid")
def _hardsigmoid(node: HeadNode) -> Step:
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))

    def slope(x: Tensor, y: Tensor) -> Tensor:
        z = alpha * x + beta
        return ((z > 0) & (z < 1)).to(x.dtype) * alpha

    return _elementwise(lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0), slope)(node)


@rule("Clip")
def _clip(node: HeadNode) -> Step:
    low, high = node.attr("min"), node.attr("max")
    if node.const(1) is not None:
        low = float(node.const(1))
    if node.const(2) is not None:
        high = float(node.const(2))
    low = -math.inf if low is None else float(low)
    high = math.inf if high is None else float(high)

    def slope(x: Tensor, y: Tensor) -> Tensor:  # torch's hardtanh (ReLU6): strictly inside the bounds
        return ((x > low) & (x < high)).to(x.dtype)

    return _elementwise(lambda x: torch.clamp(x, low, high), slope)(node)


@rule("Pow")
def _pow(node: HeadNode) -> Step:
    e = node.const(1)
    if e is None or e.size != 1:
        raise node.refuse("only a constant scalar exponent is supported")
    p = float(e.reshape(()))
    return _elementwise(lambda x: torch.pow(x, p), lambda x, y: p * torch.pow(x, p - 1))(node)


@rule("Gelu")
def _gelu(node: HeadNode) -> Step:
    if node.attr("approximate", b"none") not in (b"none", "none"):
        raise node.refuse("only the exact (erf) GELU is supported")

    def slope(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    return _elementwise(F.gelu, slope)(node)


def _softmax_axis(node: HeadNode, opset: int) -> int:
    rank = len(node.out_shape)
    axis = int(node.attr("axis", -1 if opset >= 13 else 1)) % rank
    if axis == 0 or (opset < 13 and axis != rank - 1):
        raise node.refuse(f"axis {axis} is not supported")
    return axis


@rule("Softmax")
def _softmax(node: HeadNode) -> Step:
    _only_first(node)
    axis = _softmax_axis(node, node.attr("_opset", 13))
    return Step(
        lambda xs: torch.softmax(xs[0], dim=axis),
        lambda xs, y, g: [y * (g - (g * y).sum(dim=axis, keepdim=True))],
    )


@rule("LogSoftmax")
def _log_softmax(node: HeadNode) -> Step:
    _only_first(node)
    axis = _softmax_axis(node, node.attr("_opset", 13))
    return Step(
        lambda xs: torch.log_softmax(xs[0], dim=axis),
        lambda xs, y, g: [g - torch.exp(y) * g.sum(dim=axis, keepdim=True)],
    )


@rule("LayerNormalization")
def _layer_norm(node: HeadNode) -> Step:
    _only_first(node)
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
    _only_first(node)
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


def supported_ops() -> list[str]:
    return sorted(RULES)
