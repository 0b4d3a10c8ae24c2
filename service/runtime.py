"""onnxruntime sessions: provider choice, thread settings, and a typed `Graph` wrapper."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings
from striate.errors import StriateError

log = logging.getLogger("striate.service")

# onnxruntime's tensor type strings -> NumPy dtypes (the ones a bundle may use).
ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(bool)": np.dtype(np.bool_),
}


def providers_for(device: str) -> list[str]:
    """CUDA first when asked for ("cuda") or when present ("auto"); CPU always as the fallback."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise StriateError(
            f"device 'cuda' was asked for but this onnxruntime has no CUDA provider (it has {available}); "
            "install onnxruntime-gpu or use STRIATE_DEVICE=cpu|auto"
        )
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class Graph:
    """One loaded ONNX graph. `run` is thread-safe (onnxruntime sessions are) and blocking."""

    def __init__(self, path: Path, settings: Settings, model: bytes | None = None) -> None:
        """`model`: the serialized graph, when it differs from the file at `path` (a pruned copy)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.intra_op_threads
        opts.inter_op_num_threads = settings.inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(model or str(path), opts, providers=providers_for(settings.device))
        self.provider = self.session.get_providers()[0]
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.session.run(outputs, feeds), strict=True))


def _info(arg) -> TensorInfo:
    return TensorInfo(arg.name, ORT_DTYPES.get(arg.type, np.dtype(np.float32)), tuple(arg.shape))
