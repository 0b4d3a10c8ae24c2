"""Tracing the two graphs to ONNX.

The legacy TorchScript exporter (dynamo=False) at opset 17 is used: it handles every zoo model and
torchvision backbone with a dynamic batch and writes one self-contained file. It restores each
module's training flag after tracing, so the wrappers are put in eval mode explicitly, and the
example batch has two images so that no size-1 batch axis gets specialised.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from striate.errors import StriateError

from .wrappers import ExplainGraph, FeaturesGraph, GraphIO

OPSET = 17
EXAMPLE_BATCH = 2
MODEL_FILE = "model.onnx"
EXPLAIN_FILE = "explain.onnx"


@contextmanager
def _as_striate_error(what: str) -> Iterator[None]:
    """An exporter failure (an op ONNX cannot express...) becomes one clear line, not a trace wall."""
    try:
        yield
    except (torch.onnx.errors.OnnxExporterError, RuntimeError, TypeError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise StriateError(f"ONNX export of {what} failed: {first}") from exc


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], io: GraphIO, path: Path) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad(), _as_striate_error(path.name):
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: shapes here are fixed
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(io.inputs),
            output_names=list(io.outputs),
            dynamic_axes=io.dynamic_axes(),
            do_constant_folding=True,
        )


def export_graphs(
    features: FeaturesGraph, explain: ExplainGraph, input_shape: tuple[int, int, int], folder: Path
) -> None:
    """Write model.onnx and explain.onnx for inputs of shape [N, *input_shape]."""
    image = torch.zeros(EXAMPLE_BATCH, *input_shape)
    export_onnx(features, (image,), features.io, folder / MODEL_FILE)
    # Two targets per image, so that the target axis is not specialised either.
    target = torch.tensor([[-1, 0]] * EXAMPLE_BATCH, dtype=torch.long)
    export_onnx(explain, (image, target), explain.io, folder / EXPLAIN_FILE)
