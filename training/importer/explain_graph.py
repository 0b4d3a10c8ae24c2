"""explain.onnx of an imported bundle: model.onnx joined with the traced reverse pass.

`HeadGrad` (reverse.py) is exported with torch.onnx at the model's opset and appended to model.onnx
with `onnx.compose.merge_models`, the target map and the logits feeding it. The result follows the
manifest's ExplainSpec: image, targets int64 [N, T] -> logits, explained, cam_<method> [N, T, h, w].
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from onnx import compose, version_converter

from striate.errors import StriateError
from training.export.wrappers import CAM_OUTPUTS, EXPLAIN_IO, EXPLAINED, LOGITS, TARGETS, GraphIO

from .reverse import HeadGrad, opset_of

ACTIVATIONS, SCORES = "activations", "scores"
HEAD_IO = GraphIO(
    inputs=(ACTIVATIONS, SCORES, TARGETS),
    outputs=(EXPLAINED, *CAM_OUTPUTS.values()),
    per_target=(TARGETS, EXPLAINED, *CAM_OUTPUTS.values()),
)
PREFIX = "striate_explain/"
TORCH_OPSETS = (14, 20)  # the range the TorchScript exporter writes every op of HeadGrad in


def _export_head(grad: HeadGrad, map_shape: tuple[int, int, int], opset: int) -> onnx.ModelProto:
    a = torch.zeros(2, *map_shape)
    scores = torch.zeros(2, grad.num_classes)
    targets = torch.tensor([[-1, 0], [-1, 0]], dtype=torch.long)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            grad.eval(),
            (a, scores, targets),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=list(HEAD_IO.inputs),
            output_names=list(HEAD_IO.outputs),
            dynamic_axes=HEAD_IO.dynamic_axes(),
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _convert(model: onnx.ModelProto, opset: int, what: str) -> onnx.ModelProto:
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise StriateError(f"cannot bring the {what} to opset {opset}: {str(exc).splitlines()[0]}") from None


def _rename_io(model: onnx.ModelProto, names: dict[str, str]) -> None:
    graph = model.graph
    for node in graph.node:
        node.input[:] = [names.get(t, t) for t in node.input]
        node.output[:] = [names.get(t, t) for t in node.output]
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)


def build_explain(
    body: onnx.ModelProto, grad: HeadGrad, map_output: str, map_shape: tuple[int, int, int]
) -> onnx.ModelProto:
    """explain.onnx from model.onnx (`body`) and the reverse pass of the head after `map_output`."""
    opset = opset_of(body)
    low, high = TORCH_OPSETS
    head = _export_head(grad, map_shape, min(max(opset, low), high))
    if opset < low:
        body = _convert(body, low, "model")
    elif opset > high:
        head = _convert(head, opset, "reverse pass")
    ir = max(body.ir_version, head.ir_version)
    body.ir_version = head.ir_version = ir
    merged = compose.merge_models(
        body,
        head,
        io_map=[(map_output, ACTIVATIONS), (LOGITS, SCORES)],
        prefix2=PREFIX,
        outputs=[LOGITS, *(PREFIX + o for o in HEAD_IO.outputs)],
    )
    _rename_io(merged, {PREFIX + name: name for name in (TARGETS, *HEAD_IO.outputs)})
    names = [o.name for o in merged.graph.output]
    if names != list(EXPLAIN_IO.outputs):
        raise StriateError(f"explain.onnx outputs {names} differ from the declared {list(EXPLAIN_IO.outputs)}")
    return merged
