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


def _gather_axis(node: HeadNode, rank: int) -> int:
    axis = int(node.attr("axis", 0)) % rank
    if axis == 0:
        raise node.refuse("it gathers across the batch axis")
    return axis


def _take(x: Tensor, axis: int, index: Tensor) -> Tensor:
    """x's entries at `index` (1-D) along `axis`."""
    return torch.index_select(x, axis, index)


def _take_vjp(g: Tensor, axis: int, picks: Tensor) -> Tensor:
    """The gradient of `_take` as a product with the one-hot `picks` [len(index), size]: an entry
    picked several times gets the sum of its copies' gradients (a scatter-add, written as MatMul)."""
    return (g.transpose(axis, -1) @ picks.to(g.dtype)).transpose(axis, -1)


def _one_hot(index: np.ndarray, size: int) -> Tensor:
    return torch.from_numpy((index[:, None] == np.arange(size)[None, :]).astype(np.float32))


@rule("Gather")
def _gather(node: HeadNode) -> Step:
    """Entries at constant indices along an axis other than the batch's (negative ones count from the end)."""
    only_first(node)
    src, out = node.in_shapes[0], node.out_shape
    axis = _gather_axis(node, len(src))
    indices = node.const(1)
    if indices is None or indices.dtype.kind not in "iu":
        raise node.refuse("only constant integer indices are supported")
    size = src[axis]
    flat = indices.astype(np.int64).reshape(-1)
    flat = np.where(flat < 0, flat + size, flat)
    if ((flat < 0) | (flat >= size)).any():
        raise node.refuse(f"an index is outside the axis of size {size}")
    index, picks = torch.from_numpy(flat), _one_hot(flat, size)
    taken = [-1, *src[1:axis], len(flat), *src[axis + 1 :]]
    return Step(
        lambda xs: _take(xs[0], axis, index).reshape(-1, *rest(out)),
        lambda xs, y, g: [_take_vjp(g.reshape(taken), axis, picks), None],
    )


def _slice_params(node: HeadNode, rank: int) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, from the inputs (opset >= 10) or the attributes."""
    if node.attr("_opset", 13) < 10:
        starts, ends, axes, steps = (node.attr(k) for k in ("starts", "ends", "axes", "steps"))
    else:
        if any(node.const(i) is None for i in range(1, len(node.inputs)) if node.inputs[i]):
            raise node.refuse("only constant starts, ends, axes and steps are supported")
        starts, ends, axes, steps = (None if node.const(i) is None else node.const(i).tolist() for i in range(1, 5))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    return [(int(a) % rank, int(b), int(e), int(s)) for a, b, e, s in zip(axes, starts, ends, steps, strict=True)]


@rule("Slice")
def _slice(node: HeadNode) -> Step:
    """Constant starts/ends/axes/steps (steps may be negative); the batch axis only whole."""
    only_first(node)
    src, out = node.in_shapes[0], node.out_shape
    cuts = []  # (axis, index, one-hot) per sliced axis
    for axis, start, end, step in _slice_params(node, len(src)):
        if step == 0:
            raise node.refuse("a step is 0")
        if axis == 0:
            if (start, step) != (0, 1) or end < 2**31 - 1:
                raise node.refuse("it slices the batch axis")
            continue
        kept = np.arange(*slice(start, end, step).indices(src[axis]), dtype=np.int64)
        cuts.append((axis, torch.from_numpy(kept), _one_hot(kept, src[axis])))

    def forward(xs: list[Tensor]) -> Tensor:
        x = xs[0]
        for axis, index, _ in cuts:
            x = _take(x, axis, index)
        return x

    def vjp(xs: list[Tensor], y: Tensor, g: Tensor) -> list[Tensor | None]:
        for axis, _, picks in reversed(cuts):
            g = _take_vjp(g, axis, picks)
        return [g] + [None] * (len(xs) - 1)

    expected = list(src)
    for axis, index, _ in cuts:
        expected[axis] = len(index)
    if expected[1:] != list(out[1:]):
        raise node.refuse(f"its output shape {list(out)} is not the slice's {expected}")
    return Step(forward, vjp)


@rule("Concat")
def _concat(node: HeadNode) -> Step:
    """Joins tensors computed from the target along an axis other than the batch's (a constant
    joined to them would have to match the batch, which varies)."""
    out = node.out_shape
    axis = int(node.attr("axis")) % len(out)
    if axis == 0:
        raise node.refuse("it joins along the batch axis")
    if not all(node.diff):
        raise node.refuse("an input does not depend on the target tensor")
    sizes = [s[axis] for s in node.in_shapes]
    return Step(
        lambda xs: torch.cat(xs, axis),
        lambda xs, y, g: list(torch.split(g, sizes, dim=axis)),
    )


@rule("Expand")
def _expand(node: HeadNode) -> Step:
    """Broadcast to a shape (same rank, not over the batch); the gradient sums over the broadcast axes."""
    only_first(node)
    src, out = node.in_shapes[0], node.out_shape
    if src is None or len(src) != len(out) or src[0] != out[0]:
        raise node.refuse(f"it broadcasts {list(src or ())} to {list(out)}, over the batch axis or to a new rank")
    return Step(
        lambda xs: xs[0].expand(-1, *rest(out)),
        lambda xs, y, g: [unbroadcast(g, src, out), None],
    )


def supported_ops() -> list[str]:
    return sorted(RULES)


from . import layer_ops, pointwise_ops  # noqa: E402, F401  (their rules register here)
