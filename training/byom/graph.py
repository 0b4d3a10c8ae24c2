"""torch.onnx export of any classifier with the maps of chosen layers as extra named outputs.

`MapsGraph` runs the user's module unchanged and returns (logits, *maps): forward hooks on the
chosen modules keep their outputs during the same pass, so nothing is split or re-implemented and
the ONNX graph computes exactly what the module computes. Output names are the modules' dotted
paths, so the API's layer names are the names the user already knows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from striate.errors import StriateError
from training.export.onnx_export import EXAMPLE_BATCH, export_onnx
from training.export.wrappers import CAM_OUTPUTS, EMBEDDING, EXPLAINED, IMAGE, LOGITS, TARGETS, GraphIO

RESERVED = frozenset({IMAGE, TARGETS, LOGITS, EMBEDDING, EXPLAINED, *CAM_OUTPUTS.values()})


def map_output_name(path: str) -> str:
    """The graph output holding module `path`'s map, which the bundle serves as layer `path`: the path
    itself, unless that clashes with a name the bundle reserves for its own outputs."""
    return f"{path}_layer" if path in RESERVED else path


class MapsGraph(nn.Module):
    """image -> logits, then the output of every module in `paths` (in that order)."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.paths = tuple(dict.fromkeys(paths))  # unique, order kept
        self.io = GraphIO(inputs=(IMAGE,), outputs=(LOGITS, *(map_output_name(p) for p in self.paths)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kept: dict[str, torch.Tensor] = {}
        handles = [
            self.model.get_submodule(p).register_forward_hook(lambda m, a, out, p=p: kept.__setitem__(p, out))
            for p in self.paths
        ]
        try:
            logits = self.model(image)
        finally:
            for h in handles:
                h.remove()
        return (logits, *(kept[p] for p in self.paths))


def export_maps_graph(model: nn.Module, paths: Sequence[str], input_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """The ONNX model of `MapsGraph(model, paths)` for inputs [N, *input_shape] (dynamic N)."""
    graph = MapsGraph(model, paths).eval()
    with tempfile.TemporaryDirectory(prefix="striate-byom-") as tmp:
        path = Path(tmp) / f"{type(model).__name__}.onnx"  # export errors name the file
        export_onnx(graph, (torch.zeros(EXAMPLE_BATCH, *input_shape),), graph.io, path)
        proto = onnx.load(str(path))
    if [o.name for o in proto.graph.output] != list(graph.io.outputs):
        raise StriateError(
            f"torch.onnx wrote outputs {[o.name for o in proto.graph.output]}, not {list(graph.io.outputs)}"
        )
    return proto
