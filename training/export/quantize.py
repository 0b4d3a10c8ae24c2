"""Static INT8 quantization (QDQ) of model.onnx, calibrated on training images.

Only the classification graph is quantized; explain.onnx stays float32 so Grad-CAM keeps its
parity with torch. Accuracy on the held-out split is measured with onnxruntime before and after.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

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


def quantize_int8(model_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Write the INT8 QDQ version of `model_path` (per-channel int8 weights, uint8 activations)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )


def accuracy(model_path: Path, images: np.ndarray, targets: np.ndarray, batch: int = 64) -> float:
    sess = session(model_path)
    correct = 0
    for i in range(0, len(images), batch):
        (logits,) = sess.run([LOGITS], {IMAGE: images[i : i + batch]})
        correct += int((logits.argmax(1) == targets[i : i + batch]).sum())
    return correct / len(images)
