"""Export checks itself: onnx.checker, then onnxruntime against torch on real images.

Logits and embeddings are compared with the torch model; every gradient method's maps with
pytorch-grad-cam's class of the same name (torch autograd) on the same model, images and targets.
`TOLERANCE` is the one bound: it is written into the manifest beside each figure and it is the
bound checked. Where float32 rounding alone puts a map over it (a head whose terms nearly cancel),
a float64 reference decides: onnxruntime must be no farther from it than pytorch-grad-cam is (its
farthest run over one and several torch threads, whose summation orders round differently).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from striate.errors import StriateError
from striate.explain.methods import METHODS
from striate.manifest import MethodParity, Parity
from training.explain.reference import float64_cams, package_cams, package_float64_diff
from training.models.base import StriateModel

from .onnx_export import EXPLAIN_FILE, MODEL_FILE
from .wrappers import (
    CAM_OUTPUTS,
    EMBEDDING,
    EXPLAIN_IO,
    EXPLAINED,
    IMAGE,
    LOGITS,
    TARGETS,
    FeaturesGraph,
    feature_shape,
)

TOLERANCE = 1e-4  # max abs difference on logits, embeddings (relative beyond 1) and scaled maps


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


def check_parity(
    folder: Path, model: StriateModel, images: np.ndarray, tolerance: float = TOLERANCE
) -> tuple[Parity, tuple[MethodParity, ...]]:
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

    methods = check_explain_parity(folder / EXPLAIN_FILE, model, images, expected[0], tolerance)
    explain_logits_diff = methods.pop(LOGITS)
    parity = Parity(
        images=len(images),
        max_abs_diff_logits=max(diffs[LOGITS], explain_logits_diff.max_abs_diff),
        max_abs_diff_embedding=diffs[EMBEDDING],
        max_abs_diff_cam=methods["gradcam"].max_abs_diff,
        tolerance=tolerance,
    )
    # 1e-4 absolute; on outputs larger than 1 (random-init nets reach logits of several hundred,
    # where float32 itself only resolves ~3e-5) the bound scales with the largest value.
    bounds = {
        "logits": (parity.max_abs_diff_logits, tolerance * _scale(expected[0])),
        "embedding": (parity.max_abs_diff_embedding, tolerance * _scale(expected[1])),
    }
    for what, (value, bound) in bounds.items():
        if not value <= bound:  # also catches NaN
            raise StriateError(
                f"parity check failed: onnxruntime and torch {what} differ by {value:.3g} "
                f"(tolerance {bound:.3g}) on {len(images)} real images"
            )
    raise_on_missed(methods.values(), len(images))
    return parity, tuple(methods.values())


def raise_on_missed(results: Iterable[MethodParity], images: int, where: str = "") -> None:
    """Refuse the bundle on the first method over its tolerance and farther from float64 than the package."""
    for result in results:
        if not result.passed:
            far = (
                f" and from the float64 reference by {result.float64_diff:.3g} (pytorch-grad-cam: "
                f"{result.package_float64_diff:.3g})"
                if result.float64_diff is not None and result.package_float64_diff is not None
                else ""
            )
            raise StriateError(
                f"parity check failed: {METHODS[result.method].title} in onnxruntime differs from "
                f"pytorch-grad-cam's {METHODS[result.method].package_class} by {result.max_abs_diff:.3g} "
                f"(tolerance {result.tolerance:g}){far}{where} on {images} real images"
            )


def parity_targets(num_images: int, num_classes: int) -> np.ndarray:
    """[N, 3] targets the explain graph is checked on: the predicted class, the runner-up, and a
    class chosen per image, so that several targets per image and "-k" are exercised."""
    chosen = np.arange(num_images, dtype=np.int64) % num_classes
    return np.stack([np.full(num_images, -1), np.full(num_images, -min(2, num_classes)), chosen], axis=1)


def check_explain_parity(
    path: Path,
    model: nn.Module,
    images: np.ndarray,
    logits: np.ndarray,
    tolerance: float,
    layer_path: str | None = None,
) -> dict[str, MethodParity]:
    """Per gradient method: onnxruntime vs pytorch-grad-cam at module `layer_path` (default: a Striate
    model's last stage) and, when over `tolerance`, both vs a float64 reference; plus the graph's logits
    against `logits` under the key "logits"."""
    explain = session(path)
    names = list(EXPLAIN_IO.outputs)
    missing = sorted(set(names) - {o.name for o in explain.get_outputs()})
    if missing:
        raise StriateError(f"explain.onnx lacks the declared outputs {missing}")
    targets = parity_targets(len(images), logits.shape[1])
    out = dict(zip(names, explain.run(names, {IMAGE: images, TARGETS: targets}), strict=True))
    chosen = out[EXPLAINED]
    order = np.argsort(-logits, axis=1, kind="stable")
    expected_chosen = np.where(targets < 0, np.take_along_axis(order, np.clip(-targets - 1, 0, None), 1), targets)
    if not np.array_equal(chosen[:, 2], expected_chosen[:, 2]):
        raise StriateError(f"explain.onnx explained classes {chosen[:, 2]} instead of {expected_chosen[:, 2]}")
    x = torch.from_numpy(images)
    layer = model.get_submodule(layer_path) if layer_path else None
    results: dict[str, MethodParity] = {
        LOGITS: MethodParity(method=LOGITS, max_abs_diff=_max_diff(out[LOGITS], logits), tolerance=tolerance)
    }
    reference64: dict[str, np.ndarray] | None = None
    for method, output in CAM_OUTPUTS.items():
        package = package_cams(model, x, method, chosen, layer)
        diff = _max_diff(out[output], package)
        result = MethodParity(method=method, max_abs_diff=diff, tolerance=tolerance)
        if not diff <= tolerance:
            if reference64 is None:
                reference64 = float64_cams(model, images, chosen, list(CAM_OUTPUTS), layer_path)
            result = result.model_copy(
                update={
                    "float64_diff": _max_diff(out[output], reference64[method]),
                    "package_float64_diff": package_float64_diff(
                        model, images, method, chosen, reference64[method], layer
                    ),
                }
            )
        results[method] = result
    return results
