"""Reading a foreign ONNX classifier and bringing it to the bundle's input convention.

`prepare` loads and validates the file, finds its one 4-D float image input and its logits, and
rewrites the graph so that it takes `image` float32 [batch, C, H, W]:

- an NHWC graph (its input feeds only Transpose(perm=[0, 3, 1, 2]) nodes) gets a Transpose in
  front, so the bundle's input is NCHW like every other bundle (onnxruntime folds the pair);
- a fixed batch of 1 becomes a dynamic axis: constant Reshape shapes that start with that 1 start
  with 0 instead ("copy the batch"), and the import checks that a batch gives each image's own
  outputs (`tensors.check_batch`), or says the graph cannot be batched;
- a Gather that reads a tensor flattened across the batch back in place (torch.onnx's dynamo
  exporter writes `as_strided` so) becomes an Identity, found by evaluating its indices;
- a Softmax (or LogSoftmax) producing the logits output is skipped: the bundle's `logits` are the
  scores before it, as for every other bundle (the service applies softmax itself), and
  explanations differentiate those scores, as pytorch-grad-cam does on a classifier's logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from striate.errors import StriateError
from striate.manifest import Preprocessing
from training.export.wrappers import BATCH_AXIS, IMAGE

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]
PROBABILITY_OPS = ("Softmax", "LogSoftmax")
PASS_THROUGH = ("Identity",)


@dataclass(frozen=True)
class Prepared:
    """The rewritten graph and what was found in it."""

    model: onnx.ModelProto
    scores: str  # tensor holding the class scores [N, K] (before any final softmax)
    origin_input: str  # the input's name in the source graph
    layout: str  # "NCHW" or "NHWC" (of the source graph)
    notes: tuple[str, ...]  # what was changed, in words
    fixed_batch: bool = False  # the source graph had a fixed batch size


def load(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The model, checked by onnx.checker; anything else is one line naming the problem."""
    if isinstance(source, onnx.ModelProto):
        model, where = source, "the given model"
    else:
        path = Path(source)
        if not path.is_file():
            raise StriateError(f"no such file: {path}")
        where = str(path)
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise StriateError(f"{path} is not an ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise StriateError(f"{where} is not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise StriateError(f"{where} is not a valid ONNX model: {_first_line(exc)}") from None
    return model


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def describe_input(value: onnx.ValueInfoProto) -> str:
    dims = ",".join("?" if d is None else str(d) for d in _dims(value))
    elem = TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
    return f"{value.name} {elem}[{dims}]"


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's one 4-D float input (initializers listed as inputs by old exporters are skipped)."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    images = [
        i
        for i in inputs
        if i.type.tensor_type.elem_type == TensorProto.FLOAT and len(_dims(i)) == 4 and i.type.HasField("tensor_type")
    ]
    if len(images) != 1 or len(inputs) != 1:
        found = ", ".join(describe_input(i) for i in inputs) or "none"
        raise StriateError(f"the graph needs exactly one 4-D float32 image input; its inputs: {found}")
    return images[0]


def graph_geometry(model: onnx.ModelProto) -> tuple[tuple, int | str | None]:
    """((H, W), C) of the image input as the graph declares them (ints, or names/None when dynamic)."""
    source = image_input(model)
    dims = _dims(source)
    if is_nhwc(model, source.name):
        return (dims[1], dims[2]), dims[3]
    return (dims[2], dims[3]), dims[1]


def _consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if name in n.output), None)


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def is_nhwc(model: onnx.ModelProto, name: str) -> bool:
    consumers = _consumers(model, name)
    return bool(consumers) and all(n.op_type == "Transpose" and _perm(n) == NHWC_TO_NCHW for n in consumers)


def logits_tensor(model: onnx.ModelProto, logits_output: str | None) -> str:
    """`logits_output`, or the graph's only output, or its first 2-D output."""
    outputs = [o.name for o in model.graph.output]
    if logits_output is not None:
        if logits_output not in outputs:
            raise StriateError(f"logits output {logits_output!r} is not a graph output; outputs: {', '.join(outputs)}")
        return logits_output
    if len(outputs) == 1:
        return outputs[0]
    two_d = [o.name for o in model.graph.output if len(_dims(o)) == 2]
    if not two_d:
        raise StriateError(f"no 2-D output among {', '.join(outputs)}: name the logits with logits_output")
    return two_d[0]


def before_softmax(model: onnx.ModelProto, name: str) -> tuple[str, str | None]:
    """(scores, op skipped): the input of a final Softmax/LogSoftmax (through Identity nodes), or `name`."""
    current = name
    while (node := _producer(model, current)) is not None and node.op_type in PASS_THROUGH:
        current = node.input[0]
    if node is not None and node.op_type in PROBABILITY_OPS:
        return node.input[0], node.op_type
    return name, None


def _set_dims(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of the initializers and Constant nodes (those holding a tensor)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _copy_batch_in_reshapes(model: onnx.ModelProto) -> None:
    """Reshape shapes fixed to a batch of 1 ([1, 512]) copy the batch instead ([0, 512]).

    A 0 copies only where allowzero is 0, so the rewritten Reshape gets allowzero 0; that changes
    nothing else when the shape had no 0 (torch.onnx's dynamo exporter writes allowzero=1 on every
    Reshape). A shape with a literal 0 under allowzero=1 is an empty tensor and is left alone.
    """
    graph = model.graph
    consts = _constants(graph)
    for k, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        shape = consts[node.input[1]]
        if shape.ndim != 1 or len(shape) < 2 or shape[0] != 1:
            continue
        allowzero = next((a for a in node.attribute if a.name == "allowzero"), None)
        if allowzero is not None and allowzero.i:
            if (shape == 0).any():
                continue
            allowzero.i = 0
        name, old = f"striate_batch_shape_{k}", node.input[1]
        graph.initializer.append(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(np.int64), name))
        node.input[1] = name
        _drop_unused(graph, old)


def _drop_unused(graph: onnx.GraphProto, name: str) -> None:
    """Remove the initializer or Constant node `name` if nothing reads it any more."""
    if any(name in n.input for n in graph.node) or any(o.name == name for o in graph.output):
        return
    kept = [i for i in graph.initializer if i.name != name]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and list(n.output) == [name])]
    del graph.node[:]
    graph.node.extend(nodes)


def _in_place_gathers(model: onnx.ModelProto, batch: int) -> int:
    """Replace Gather(Reshape(x, [-1]), indices) that reads x in place by x; the number replaced.

    torch.onnx's dynamo exporter writes `as_strided` (timm's convnext head) that way: the tensor
    flattened across the batch, then gathered back with indices computed for the batch size (or
    fixed for the example's). When the indices are arange(x.size) in x's shape, the pair is the
    identity, and the graph is one a batch can run through and the reverse pass can follow.
    """
    from .tensors import probe_image, run

    graph = model.graph
    consts = _constants(graph)
    producers = {t: n for n in graph.node for t in n.output}
    found = []
    for node in graph.node:
        flat = producers.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if flat is None or flat.op_type != "Reshape" or axis != 0 or len(flat.input) < 2:
            continue
        shape = consts.get(flat.input[1])
        if shape is not None and shape.tolist() == [-1]:
            found.append((node, flat.input[0]))
    if not found:
        return 0
    names = [t for node, x in found for t in (x, node.input[1])]
    values = run(model, names, probe_image(model, batch))
    replaced = 0
    for node, x in found:
        data, indices = values[x], values[node.input[1]].astype(np.int64)
        indices = np.where(indices < 0, indices + data.size, indices)
        if indices.shape == data.shape and np.array_equal(indices.ravel(), np.arange(data.size)):
            node.op_type, node.input[:] = "Identity", [x]
            del node.attribute[:]
            replaced += 1
    if replaced:
        _prune(graph)
    return replaced


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers no graph output depends on any more."""
    used = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(t in used for t in node.output):
            kept.append(node)
            used.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inputs = {i.name for i in graph.input}
    weights = [i for i in graph.initializer if i.name in used or i.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(weights)


def prepare(model: onnx.ModelProto, preprocessing: Preprocessing, logits_output: str | None = None) -> Prepared:
    """A copy of `model` whose input is `image` [batch, C, H, W] (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    source = image_input(model)
    layout = "NHWC" if is_nhwc(model, source.name) else "NCHW"
    dims = _dims(source)
    batch, spatial = dims[0], (dims[1:3] if layout == "NHWC" else dims[2:4])
    channels = dims[3] if layout == "NHWC" else dims[1]
    want_c, (want_h, want_w) = preprocessing.channels, preprocessing.crop_size
    if isinstance(channels, int) and channels != want_c:
        raise StriateError(
            f"the graph takes {channels}-channel images ({layout}) but color mode {preprocessing.color_mode} "
            f"gives {want_c}"
        )
    if any(isinstance(d, int) for d in spatial) and tuple(spatial) != (want_h, want_w):
        raise StriateError(
            f"the graph takes {spatial[0]}x{spatial[1]} images but the preprocessing crops to {want_h}x{want_w}"
        )
    notes: list[str] = []
    if layout == "NHWC":
        notes.append("NHWC input: a Transpose in front makes the bundle's input NCHW")
    if isinstance(batch, int):
        notes.append(f"fixed batch of {batch} made dynamic")
        if batch == 1:
            _copy_batch_in_reshapes(model)
    scores_out = logits_tensor(model, logits_output)
    scores, skipped = before_softmax(model, scores_out)
    if skipped:
        notes.append(f"the final {skipped} is skipped: logits and explanations use the scores before it")

    names = {t for n in graph.node for t in (*n.input, *n.output)} | {i.name for i in graph.initializer}
    if source.name != IMAGE and IMAGE in names:
        raise StriateError(f"the graph already has a tensor named {IMAGE!r} that is not its input")
    image = helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, [BATCH_AXIS, want_c, want_h, want_w])
    front: list[onnx.NodeProto] = []
    if layout == "NHWC":
        front.append(helper.make_node("Transpose", [IMAGE], [source.name], perm=NCHW_TO_NHWC, name="striate_to_nhwc"))
    elif source.name != IMAGE:
        front.append(helper.make_node("Identity", [IMAGE], [source.name], name="striate_image"))
    kept_inputs = [i for i in graph.input if i.name != source.name]
    del graph.input[:]
    graph.input.extend([image, *kept_inputs])
    nodes = [*front, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes recorded for a fixed batch would contradict the dynamic one
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    if replaced := _in_place_gathers(model, batch if isinstance(batch, int) else 2):
        notes.append(f"{replaced} Gather node(s) reading a flattened tensor in place (as_strided) made Identity")
    return Prepared(model, scores, source.name, layout, tuple(notes), isinstance(batch, int))
