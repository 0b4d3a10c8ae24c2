"""The reverse pass: d(class score)/d(target tensor) over the ONNX graph after the target tensor.

1. `head_nodes` finds the head: the nodes on a path from the target tensor A to the scores. Their
   other inputs are constants (weights, and shape computations that the probe evaluated); a float
   input computed from the image by another path is refused, as is any op without a rule in ops.py.
2. `HeadFunction` runs the head forward in torch (one `Step` per node) and walks it backwards,
   accumulating each tensor's gradient from its consumers, from a one-hot seed on the scores.
3. `HeadGrad` is what explain.onnx appends to the model: (A, scores, targets) -> explained classes
   and every gradient method's maps, through the CAM formulas of training/explain/cams.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from striate.errors import StriateError
from training.explain.cams import cam
from training.explain.head import choose_targets
from training.export.wrappers import CAM_OUTPUTS

from .ops import RULES, HeadNode, NotDifferentiable, Step, node_attrs

SHAPE_OPS = ("Shape", "Size")  # their outputs depend on a tensor's shape only, not its values


def _reach(model: onnx.ModelProto, start: str, stop: tuple[str, ...] = ()) -> set[str]:
    """Tensors computed from `start` (itself included), not following nodes of the types `stop`."""
    found = {start}
    for node in model.graph.node:
        if node.op_type not in stop and any(t in found for t in node.input):
            found.update(t for t in node.output if t)
    return found


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def head_nodes(model: onnx.ModelProto, values: dict[str, np.ndarray], target: str, scores: str) -> list[HeadNode]:
    """The head between `target` and `scores`, in graph order, each node checked against ops.RULES."""
    from_target = _reach(model, target)
    if scores not in from_target:
        raise StriateError(f"the logits do not depend on target tensor {target!r}")
    if scores == target:
        raise StriateError(f"target tensor {target!r} is the logits themselves")
    from_image = _reach(model, model.graph.input[0].name)
    from_pixels = _reach(model, model.graph.input[0].name, stop=SHAPE_OPS)
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    needed, chosen = {scores}, []
    for node in reversed(model.graph.node):
        if any(t in needed for t in node.output) and target not in node.output:
            chosen.append(node)
            needed.update(t for t in node.input if t)
    opset = opset_of(model)
    head: list[HeadNode] = []
    for node in reversed(chosen):
        outputs_float = [values[t].dtype == np.float32 for t in node.output if t in values]
        if not any(t in from_target for t in node.output) or not any(outputs_float):
            continue  # a constant, or a shape computation: its value is the probe's
        name = node.name or f"{node.op_type}({node.output[0]})"
        diff = [bool(t) and t in from_target and values[t].dtype == np.float32 for t in node.input]
        known = {t: consts[t] if t in consts else values.get(t) for t in node.input if t}
        for t, is_diff in zip(node.input, diff, strict=True):
            if t and not is_diff and t in from_image and known[t] is not None and known[t].dtype == np.float32:
                raise NotDifferentiable(
                    f"cannot differentiate {node.op_type} node {name!r}: its input {t!r} comes from the image by "
                    "another path than the target tensor (choose a target tensor after it)"
                )
            if t and not is_diff and t in from_pixels and known[t] is not None:
                raise NotDifferentiable(
                    f"cannot differentiate {node.op_type} node {name!r}: its input {t!r} is computed from the "
                    "image's values, so the probe's value of it would not hold for other images"
                )
        attrs = node_attrs(node) | {"_opset": opset}
        item = HeadNode(
            name=name,
            op_type=node.op_type,
            inputs=list(node.input),
            outputs=list(node.output),
            attrs=attrs,
            in_shapes=[tuple(values[t].shape) if t in values else None for t in node.input],
            out_shape=tuple(values[node.output[0]].shape),
            diff=diff,
            consts={i: known[t] for i, t in enumerate(node.input) if t and not diff[i] and known[t] is not None},
        )
        if node.op_type not in RULES or node.domain not in ("", "ai.onnx"):
            raise NotDifferentiable(
                f"cannot differentiate {node.op_type} node {name!r}: no backward rule for {node.op_type} "
                f"(supported in the head: {', '.join(sorted(RULES))})"
            )
        head.append(item)
    return head


class HeadFunction(nn.Module):
    """The head as torch ops: `forward(a)` gives the scores; `grad(a, seed)` d(seed · scores)/d a."""

    def __init__(self, nodes: list[HeadNode], target: str, scores: str) -> None:
        super().__init__()
        self.nodes = nodes
        self.steps: list[Step] = [RULES[n.op_type](n) for n in nodes]
        self.target, self.scores = target, scores
        self.constants = nn.ParameterDict()  # float constant inputs, so .double() converts them
        for k, n in enumerate(nodes):
            for i, value in n.consts.items():
                if value.dtype == np.float32:
                    self.constants[f"c{k}_{i}"] = nn.Parameter(torch.from_numpy(value.copy()), requires_grad=False)

    def _inputs(self, k: int, env: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        node = self.nodes[k]
        out = []
        for i, t in enumerate(node.inputs):
            if node.diff[i]:
                out.append(env[t])
            else:
                key = f"c{k}_{i}"
                out.append(self.constants.get(key))
        return out

    def run(self, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head tensor for activations `a` [M, C, h, w]."""
        env = {self.target: a}
        for k, (node, step) in enumerate(zip(self.nodes, self.steps, strict=True)):
            env[node.outputs[0]] = step.forward(self._inputs(k, env))
        return env

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.run(a)[self.scores]

    def grad(self, a: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        """The vector-Jacobian product seed [M, K] · d scores / d a, by the nodes' rules."""
        env = self.run(a)
        grads: dict[str, torch.Tensor] = {self.scores: seed}
        for k in reversed(range(len(self.nodes))):
            node = self.nodes[k]
            g = grads.get(node.outputs[0])
            if g is None:
                continue
            xs = self._inputs(k, env)
            for i, gi in enumerate(self.steps[k].vjp(xs, env[node.outputs[0]], g)):
                if gi is not None and node.diff[i]:
                    name = node.inputs[i]
                    grads[name] = grads[name] + gi if name in grads else gi
        return grads[self.target]


class HeadGrad(nn.Module):
    """(activations [N, C, h, w], scores [N, K], targets [N, T]) -> explained [N, T], cam_<method> [N, T, h, w]."""

    def __init__(self, head: HeadFunction, num_classes: int) -> None:
        super().__init__()
        self.head = head
        self.num_classes = num_classes

    def forward(self, a: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        chosen = choose_targets(scores, targets)
        n, t = chosen.shape
        # Every target of an image is one row: the head runs on the image's activations T times.
        rows = a.unsqueeze(1).expand(n, t, *a.shape[1:]).reshape(n * t, *a.shape[1:])
        seed = F.one_hot(chosen.reshape(-1), self.num_classes).to(a.dtype)
        g = self.head.grad(rows, seed).reshape(n, t, *a.shape[1:])
        return (chosen, *(cam(method, a.unsqueeze(1), g) for method in CAM_OUTPUTS))


def build_head(model: onnx.ModelProto, values: dict[str, np.ndarray], target: str, scores: str) -> HeadFunction:
    return HeadFunction(head_nodes(model, values, target, scores), target, scores).eval()
