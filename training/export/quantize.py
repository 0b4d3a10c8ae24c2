"""Static INT8 quantization (QDQ) of model.onnx, calibrated on training images.

Only the classification graph is quantized; explain.onnx stays float32 so Grad-CAM keeps its
parity with torch. Accuracy on the held-out split is measured with onnxruntime before and after.

Arithmetic on tensor shapes stays float: TF-style "same" padding (EfficientNet-Lite) computes its
pads from the input's size (Shape -> Gather -> Div -> Ceil -> ... -> Pad), and quantizing those
few numbers rounds the pads, so feature maps change size and a later MatMul fails. Those nodes are
excluded from quantization (`shape_arithmetic`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from striate.errors import StriateError

from .parity import session
from .wrappers import IMAGE, LOGITS

METHOD = "int8-static-qdq"
CALIB_BATCH = 16


class _Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([images[i : i + CALIB_BATCH] for i in range(0, len(images), CALIB_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {IMAGE: batch}


def shape_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute from tensor shapes only (and constants), in graph order."""
    known = {init.name for init in model.graph.initializer}  # constants, then shape-derived values
    derived: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant":
            known.update(node.output)
        elif node.op_type == "Shape" or (
            inputs and all(name in known for name in inputs) and any(name in derived for name in inputs)
        ):
            derived.update(node.output)
            known.update(node.output)
            names.append(node.name)
    return names


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the quantizer excludes nodes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def quantize_int8(model_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Write the INT8 QDQ version of `model_path` (per-channel int8 weights, uint8 activations)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        _name_nodes(model)
        onnx.save(model, str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=shape_arithmetic(model),
        )
    _check_runs(model_path, out_path, calibration[:CALIB_BATCH])


def _check_runs(float_path: Path, int8_path: Path, images: np.ndarray) -> None:
    """Refuse an INT8 graph that does not run, or gives logits of another shape, on real images."""
    (want,) = session(float_path).run([LOGITS], {IMAGE: images})
    try:
        (got,) = session(int8_path).run([LOGITS], {IMAGE: images})
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StriateError(f"the INT8 graph does not run ({first}); export without --quantize") from None
    if got.shape != want.shape:
        raise StriateError(f"the INT8 graph gives logits {got.shape}, float32 {want.shape}; export without --quantize")


def accuracy(model_path: Path, images: np.ndarray, targets: np.ndarray, batch: int = 64) -> float:
    sess = session(model_path)
    correct = 0
    for i in range(0, len(images), batch):
        (logits,) = sess.run([LOGITS], {IMAGE: images[i : i + batch]})
        correct += int((logits.argmax(1) == targets[i : i + batch]).sum())
    return correct / len(images)
