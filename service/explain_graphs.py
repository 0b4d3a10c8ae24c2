"""One explain graph per gradient method, so that a request pays only for the method it asks for.

onnxruntime runs every node of a graph whatever outputs a call names: explain.onnx computes all
its methods' maps on every run (on the digits default that is ~1.25x a classify instead of ~1.1x).
Here, on a method's first request, the bundle's explain graph is pruned to the nodes its logits,
explained classes and that method's maps need (onnx's Extractor), opened as its own session with
its own batcher and warmed up; later requests reuse it. Nothing is written to the bundle.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import onnx
from onnx.utils import Extractor

from service.batcher import Batcher
from service.repository import LoadedModel
from service.runtime import Graph
from service.settings import Settings


def prune(path: Path, outputs: list[str]) -> onnx.ModelProto:
    """The graph at `path` cut down to `outputs` and the nodes they need (same inputs)."""
    full = onnx.load(str(path))
    weights = {t.name for t in full.graph.initializer}
    inputs = [i.name for i in full.graph.input if i.name not in weights]
    return Extractor(full).extract_model(inputs, outputs)


def pruned_graph(model: LoadedModel, outputs: list[str], settings: Settings) -> Graph:
    """The bundle's explain graph cut down to `outputs`, as a session."""
    path = model.path / model.manifest.explain.graph
    return Graph(path, settings, model=prune(path, outputs).SerializeToString())


def _warm_up(model: LoadedModel, graph: Graph, outputs: list[str]) -> float:
    """First-call allocations; returns the second run's time (the batcher's first estimate)."""
    spec, ex = model.manifest.input, model.manifest.explain
    feeds = {
        spec.name: np.zeros((1, spec.channels, spec.height, spec.width), np.float32),
        ex.targets_input: np.full((1, 1), -1, np.int64),
    }
    graph.run(feeds, outputs)
    start = time.perf_counter()
    graph.run(feeds, outputs)
    return time.perf_counter() - start


async def method_batcher(model: LoadedModel, method: str, settings: Settings) -> tuple[Batcher, list[str]]:
    """The batcher of `method`'s own explain graph, and the outputs it gives (logits, explained, maps).

    Two first requests at once may both build the graph; the first to finish is kept (no await
    between the check and the insert, so the dict never holds two).
    """
    ex = model.manifest.explain
    outputs = [ex.logits_output, ex.explained_output, ex.cam_outputs[method]]
    batcher = model.method_batchers.get(method)
    if batcher is not None or model.make_batcher is None:
        return batcher or model.explain_batcher, outputs
    graph = await asyncio.to_thread(pruned_graph, model, outputs, settings)
    run_s = await asyncio.to_thread(_warm_up, model, graph, outputs)
    batcher = model.method_batchers.get(method)
    if batcher is None:
        batcher = model.make_batcher(model.name, model.version, f"explain_{method}", graph)
        batcher.recent_run_s = run_s
        batcher.start()
        model.method_batchers[method] = batcher
    return batcher, outputs
