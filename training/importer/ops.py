"""The ONNX ops a classifier head uses, each as a torch forward and its vector-Jacobian product.

`RULES[op_type](node)` checks one node of the head and returns its `Step`: `forward(xs)` computes
the node's (first) output from its inputs, `vjp(xs, y, g)` the gradient of each input given the
output's gradient `g` (None for inputs that are constants). Both are plain torch ops, so the same
code runs eagerly (autograd of `forward` is the yardstick of `vjp` in the tests) and traces into
the explain graph. Shapes are the probe's static ones; axis 0 is always the batch, which may be
anything at run time (every target of every image is one row). Shape ops and arithmetic are here,
layers in layer_ops.py, activations in pointwise_ops.py.

Conventions at non-differentiable points are torch's, so that maps match pytorch-grad-cam on the
source model: ReLU passes the gradient where x > 0, Clip (ReLU6) strictly inside its bounds,
HardSwish as torch's hardswish_backward, a global max pool to the first maximal cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
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


def rest(shape: Shape) -> list[int]:
    return [int(d) for d in shape[1:]]


def only_first(node: HeadNode) -> None:
    if not node.diff[0] or any(node.diff[1:]):
        raise node.refuse("only its first input may depend on the target tensor")


def axes_of(node: HeadNode, rank: int, input_index: int = 1) -> list[int] | None:
    axes = node.attr("axes")
    if axes is None and node.const(input_index) is not None:
        axes = node.const(input_index).tolist()
    if axes is None:
        return None
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes:
        raise node.refuse("it works across the batch axis")
    return axes


def unbroadcast(g: Tensor, shape: Shape, out: Shape) -> Tensor:
    """Sum `g` (shaped like `out`) over the axes along which an input of `shape` was broadcast."""
    axes = [i for i in range(1, len(out)) if shape[i] == 1 and out[i] != 1]
    return g.sum(dim=axes, keepdim=True) if axes else g


@rule("Identity", "Dropout")
def _identity(node: HeadNode) -> Step:
    only_first(node)
    return Step(lambda xs: xs[0], lambda xs, y, g: [g])


@rule("Cast")
def _cast(node: HeadNode) -> Step:
    if node.attr("to") != 1:  # FLOAT
        raise node.refuse("it casts to a type other than float32")
    return _identity(node)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(node: HeadNode) -> Step:
    only_first(node)
    src, out = node.in_shapes[0], node.out_shape
    if src is None or len(out) == 0 or out[0] != src[0]:
        raise node.refuse(f"it moves the batch axis ({list(src or ())} -> {list(out)})")
    return Step(lambda xs: xs[0].reshape(-1, *rest(out)), lambda xs, y, g: [g.reshape(-1, *rest(src))])


@rule("Transpose")
def _transpose(node: HeadNode) -> Step:
    only_first(node)
    perm = list(node.attr("perm") or reversed(range(len(node.out_shape))))
    if perm[0] != 0:
        raise node.refuse(f"perm {perm} moves the batch axis")
    inverse = list(np.argsort(perm))
    return Step(lambda xs: xs[0].permute(*perm), lambda xs, y, g: [g.permute(*inverse)])


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
        return [unbroadcast(gi, shapes[i], out) if node.diff[i] else None for i, gi in enumerate(grads)]

    return Step(forward, vjp)


def supported_ops() -> list[str]:
    return sorted(RULES)


from . import layer_ops, pointwise_ops  # noqa: E402, F401  (their rules register here)
