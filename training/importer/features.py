"""model.onnx of an imported bundle: the prepared graph with the bundle's outputs.

Outputs, in the exporter's order: `logits` (the scores), `embedding` (the vector feeding the final
Gemm/MatMul, else the target map's global average), then `<layer>_pooled` [N, C] and `<layer>_map`
[N, C, h, w] for each feature tensor and the target tensor last. Layer names come from the
module that made the tensor: the TorchScript exporter's tensor names say it
(`/layer4/layer4.1/relu_1/Relu_output_0` -> `layer4.1.relu_1`), the dynamo exporter's node
metadata does (`relu_16` made in `layer4.1.relu` -> `layer4.1.relu`); else the tensor's name.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from striate.errors import StriateError
from training.export.wrappers import (
    BATCH_AXIS,
    CAM_OUTPUTS,
    EMBEDDING,
    EXPLAINED,
    IMAGE,
    LOGITS,
    TARGETS,
    map_name,
    pooled_name,
)

RESERVED = {IMAGE, TARGETS, LOGITS, EMBEDDING, EXPLAINED, *CAM_OUTPUTS.values()}
BIAS_OPS = ("Add", "Identity")


NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # dynamo's node metadata: module paths, root to op


def module_path(model: onnx.ModelProto, tensor: str) -> str | None:
    """The torch module path of the node that made `tensor`, when the exporter recorded it
    (torch.onnx's dynamo exporter: `['', 'layer4', 'layer4.1', 'layer4.1.relu', 'relu_16']`)."""
    node = next((n for n in model.graph.node if tensor in n.output), None)
    if node is None:
        return None
    scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), None)
    try:
        paths = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        return None
    modules = [p for p in paths[:-1] if isinstance(p, str) and p]  # the last entry is the op's own name
    return modules[-1] if modules else None


def layer_name(tensor: str, taken: set[str]) -> str:
    """A readable, URL-safe layer name for `tensor`, distinct from `taken` and the graph's own names.

    torch.onnx names tensors by module scope and op, `/stages/stages.3/blocks/blocks.1/Add_output_0`:
    the op is dropped and a scope repeated as the next one's prefix is said once (`stages.3.blocks.1`).
    """
    parts = [p for p in re.sub(r"_output_\d+$", "", tensor).split("/") if p]
    if len(parts) > 1 and re.fullmatch(r"[A-Z][A-Za-z]*(_\d+)?", parts[-1]):
        parts = parts[:-1]
    kept = [p for p, after in zip(parts, [*parts[1:], ""], strict=True) if not after.startswith(f"{p}.")]
    name = re.sub(r"_map$", "", ".".join(kept)).replace("::", ".")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._-") or "layer"
    candidate, k = name, 2
    while candidate in taken or candidate in RESERVED:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


def find_embedding(model: onnx.ModelProto, scores: str, values: dict[str, np.ndarray]) -> str | None:
    """The [N, D] input of the Gemm/MatMul that makes the scores (through a bias Add), if any."""
    producers = {t: n for n in model.graph.node for t in n.output}
    consts = {i.name for i in model.graph.initializer} | {
        t for n in model.graph.node if n.op_type == "Constant" for t in n.output
    }
    node = producers.get(scores)
    while node is not None and node.op_type in BIAS_OPS:
        moving = [t for t in node.input if t not in consts]
        if len(moving) != 1:
            return None
        node = producers.get(moving[0])
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    x = node.input[0]
    value = values.get(x)
    return x if value is not None and value.ndim == 2 and value.dtype == np.float32 else None


@dataclass(frozen=True)
class Layer:
    name: str
    tensor: str  # the source graph's tensor holding the map


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]


def build_features(model: onnx.ModelProto, scores: str, embedding: str | None, layers: list[Layer]) -> onnx.ModelProto:
    """A copy of the prepared `model` whose outputs are the bundle's (see the module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    pooled_sources = {pooled_name(layer.name): f"striate/{layer.name}/gap" for layer in layers}
    if embedding is None:
        if not layers:
            raise StriateError("found no embedding (no Gemm/MatMul before the logits) and no feature map to pool")
        embedding_source = f"striate/{layers[-1].name}/gap"
        embedding_is_map = True
    else:
        embedding_source, embedding_is_map = embedding, False
    wanted: list[tuple[str, str, str]] = [(LOGITS, scores, "Identity")]
    wanted.append((EMBEDDING, embedding_source, "Flatten" if embedding_is_map else "Identity"))
    wanted += [(out, src, "Flatten") for out, src in pooled_sources.items()]
    wanted += [(map_name(layer.name), layer.tensor, "Identity") for layer in layers]
    existing = {t for n in graph.node for t in n.output}
    for out, src, _ in wanted:
        if out in existing and out != src:  # a graph tensor already has the output's name
            _rename(graph, out, f"{out}__source")
    renamed = {out: f"{out}__source" for out, src, _ in wanted if out in existing and out != src}
    nodes = [
        helper.make_node("GlobalAveragePool", [renamed.get(layer.tensor, layer.tensor)], [gap], name=gap)
        for layer, gap in zip(layers, pooled_sources.values(), strict=True)
    ]
    for out, src, op in wanted:
        src = renamed.get(src, src)
        if src != out:
            nodes.append(helper.make_node(op, [src], [out], name=f"striate/{out}"))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(onnx.ValueInfoProto(name=out) for out, _, _ in wanted)
    return model


def set_output_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Declare each output float32 [batch, *shape] (`shapes` without the batch axis)."""
    for out in model.graph.output:
        out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [BATCH_AXIS, *shapes[out.name]]))
