"""onnxruntime sessions: provider choice, thread settings, and a typed `Graph` wrapper."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
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
    """One loaded ONNX graph. `run` is thread-safe (onnxruntime sessions are) and blocking.

    On CUDA, runs go through onnxruntime's I/O binding (`BoundRuns`): inputs land in device buffers
    reused from call to call, outputs are allocated by onnxruntime on the device and copied back
    once. `io_binding=True` takes that path on any provider (the CPU provider supports it).
    `model`: the serialized graph, when it differs from the file at `path` (a pruned copy)."""

    def __init__(
        self, path: Path, settings: Settings, io_binding: bool | None = None, model: bytes | None = None
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.intra_op_threads
        opts.inter_op_num_threads = settings.inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(model or str(path), opts, providers=providers_for(settings.device))
        self.provider = self.session.get_providers()[0]
        self.inputs = {i.name: _info(i) for i in self.session.get_inputs()}
        self.outputs = {o.name: _info(o) for o in self.session.get_outputs()}
        if io_binding is None:
            io_binding = self.provider == "CUDAExecutionProvider"
        device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.bound = BoundRuns(self.session, device) if io_binding else None

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if self.bound is not None:
            return self.bound.run(feeds, outputs)
        return dict(zip(outputs, self.session.run(outputs, feeds), strict=True))


REUSED_SHAPES = 8  # device input buffers kept per thread and input


@dataclass
class _Binding:
    """One thread's I/O binding and its input buffers on the device."""

    binding: ort.IOBinding
    inputs: dict[tuple, ort.OrtValue] = field(default_factory=dict)  # (name, shape, dtype) -> buffer


class BoundRuns:
    """Runs through `IOBinding`, one binding per thread (a binding is not thread-safe).

    An input buffer is allocated on the device once per shape (the last `REUSED_SHAPES` batch shapes
    are kept: dynamic batching varies the batch size) and refilled with `update_inplace`
    (a host-to-device copy, no allocation); outputs are bound to the device, so onnxruntime writes
    them where the graph computed them, and `copy_outputs_to_cpu` brings them back in one copy each.
    """

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int = 0) -> None:
        self.session, self.device, self.device_id = session, device, device_id
        self._local = threading.local()

    def _state(self) -> _Binding:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _Binding(self.session.io_binding())
        return state

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        state = self._state()
        binding = state.binding
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            key = (name, array.shape, array.dtype.str)
            buffer = state.inputs.pop(key, None)
            if buffer is None:  # memory onnxruntime owns, on the device (on the CPU too: the same path)
                buffer = ort.OrtValue.ortvalue_from_shape_and_type(
                    list(array.shape), array.dtype.type, self.device, self.device_id
                )
            buffer.update_inplace(array)
            state.inputs[key] = buffer  # most recently used last
            while len(state.inputs) > REUSED_SHAPES:
                state.inputs.pop(next(iter(state.inputs)))
            binding.bind_ortvalue_input(name, buffer)
        binding.clear_binding_outputs()
        for name in outputs:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()
        return dict(zip(outputs, values, strict=True))


def _info(arg) -> TensorInfo:
    return TensorInfo(arg.name, ORT_DTYPES.get(arg.type, np.dtype(np.float32)), tuple(arg.shape))
