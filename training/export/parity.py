"""Export checks itself: onnx.checker, then onnxruntime against torch on real images.

Logits and embeddings are compared with the torch model, the cam with the `grad-cam` package
(torch autograd) on the same model and images. Any difference over the tolerance fails the export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from striate.errors import StriateError
from striate.manifest import Parity
from training.models.base import StriateModel

from .gradcam import reference_cam
from .onnx_export import EXPLAIN_FILE, MODEL_FILE
from .wrappers import CAM, EMBEDDING, IMAGE, LOGITS, TARGET, FeaturesGraph, feature_shape

TOLERANCE = 1e-4
# The cam is a channel sum of alpha_k * A_k scaled by its maximum: when the terms nearly cancel (a
# freshly initialised head) float32 noise of ~1e-6 in A can grow past 1e-4, so an export is only
# refused beyond 1e-3. Trained networks land at ~1e-6 to 1e-5; tests hold the zoo to 1e-4.
CAM_TOLERANCE = 1e-3


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0


def _scale(reference: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0


def check_graphs(folder: Path) -> None:
    for name in (MODEL_FILE, EXPLAIN_FILE):
        try:
            onnx.checker.check_model(str(folder / name), full_check=True)
        except Exception as exc:
            raise StriateError(f"onnx.checker rejected {name}: {str(exc).splitlines()[0]}") from None


def check_parity(folder: Path, model: StriateModel, images: np.ndarray, tolerance: float = TOLERANCE) -> Parity:
    """Compare both graphs in `folder` with `model` on `images` [N, C, H, W]; raise if over tolerance."""
    check_graphs(folder)
    model.eval()
    x = torch.from_numpy(images)
    features = FeaturesGraph(model, feature_shape(model, tuple(images.shape[1:]))).eval()
    with torch.no_grad():
        expected = [t.numpy() for t in features(x)]
        # The graphs compute the head with their own ops: hold them to the model's own forward.
        expected[0] = model(x).numpy()
        expected[1] = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    sess = session(folder / MODEL_FILE)
    names = [o.name for o in sess.get_outputs()]
    if names != list(features.io.outputs):
        raise StriateError(f"model.onnx outputs {names} differ from the declared {list(features.io.outputs)}")
    got = sess.run(None, {IMAGE: images})
    diffs = {name: _max_diff(g, e) for name, g, e in zip(names, got, expected, strict=True)}
    # Stage outputs can hold large activations: hold them to the tolerance relative to their scale.
    for name, e in zip(names[2:], expected[2:], strict=True):
        scale = _scale(e)
        if not diffs[name] <= tolerance * scale:
            raise StriateError(
                f"parity check failed: output {name!r} differs by {diffs[name]:.3g} (largest value {scale:.3g})"
            )

    explain = session(folder / EXPLAIN_FILE)
    explain_names = [o.name for o in explain.get_outputs()]
    num_classes = expected[0].shape[1]
    chosen = np.arange(len(images), dtype=np.int64) % num_classes
    cam_diff, explain_logits_diff = 0.0, 0.0
    for target in (np.full(len(images), -1, dtype=np.int64), chosen):
        out = dict(zip(explain_names, explain.run(None, {IMAGE: images, TARGET: target}), strict=True))
        wanted = None if target[0] < 0 else target.tolist()
        cam_diff = max(cam_diff, _max_diff(out[CAM], reference_cam(model, x, wanted)))
        explain_logits_diff = max(explain_logits_diff, _max_diff(out[LOGITS], expected[0]))
    parity = Parity(
        images=len(images),
        max_abs_diff_logits=max(diffs[LOGITS], explain_logits_diff),
        max_abs_diff_embedding=diffs[EMBEDDING],
        max_abs_diff_cam=cam_diff,
        tolerance=tolerance,
    )
    # 1e-4 absolute; on outputs larger than 1 (random-init nets reach logits of several hundred,
    # where float32 itself only resolves ~3e-5) the bound scales with the largest value.
    bounds = {
        "logits": (parity.max_abs_diff_logits, tolerance * _scale(expected[0])),
        "embedding": (parity.max_abs_diff_embedding, tolerance * _scale(expected[1])),
        "cam": (cam_diff, max(tolerance, CAM_TOLERANCE)),
    }
    for what, (value, bound) in bounds.items():
        if not value <= bound:  # also catches NaN
            raise StriateError(
                f"parity check failed: onnxruntime and torch {what} differ by {value:.3g} "
                f"(tolerance {bound:.3g}) on {len(images)} real images"
            )
    return parity
