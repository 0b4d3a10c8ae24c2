"""Head rules for element-wise activations and softmax (see ops.py); conventions at kinks are torch's."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .ops import RULES, HeadNode, Step, Tensor, only_first, rule


def _elementwise(forward: Callable[[Tensor], Tensor], slope: Callable[[Tensor, Tensor], Tensor]):
    """A one-input op whose Jacobian is diagonal: slope(x, y) is dy/dx per element."""

    def build(node: HeadNode) -> Step:
        only_first(node)
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
    only_first(node)
    axis = _softmax_axis(node, node.attr("_opset", 13))
    return Step(
        lambda xs: torch.softmax(xs[0], dim=axis),
        lambda xs, y, g: [y * (g - (g * y).sum(dim=axis, keepdim=True))],
    )


@rule("LogSoftmax")
def _log_softmax(node: HeadNode) -> Step:
    only_first(node)
    axis = _softmax_axis(node, node.attr("_opset", 13))
    return Step(
        lambda xs: torch.log_softmax(xs[0], dim=axis),
        lambda xs, y, g: [g - torch.exp(y) * g.sum(dim=axis, keepdim=True)],
    )
