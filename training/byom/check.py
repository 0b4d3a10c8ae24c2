"""The export's self-check for any classifier: onnxruntime against the torch module, and every
gradient method in the explain graph against pytorch-grad-cam on the module itself.

It runs on the importer's staging folder before the bundle lands (`import_onnx(check=...)`), so a
miss refuses the bundle and leaves nothing behind. The bounds are the zoo exporter's
(`training.export.parity.TOLERANCE`, relative beyond 1 for logits and maps), and a map over the
bound is judged against a float64 reference exactly as for zoo models (`MethodParity.passed`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.errors import StriateError
from striate.explain.methods import METHODS
from striate.manifest import MethodParity, Parity
from training.explain.reference import TorchCAM
from training.export.onnx_export import EXPLAIN_FILE, MODEL_FILE
from training.export.parity import TOLERANCE, parity_targets, session
from training.export.wrappers import CAM_OUTPUTS, EMBEDDING, EXPLAINED, IMAGE, LOGITS, TARGETS, map_name

from .graph import MapsGraph, map_output_name


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0


def _scale(reference: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0


def package_cams_at(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, method: str, targets: np.ndarray
) -> np.ndarray:
    """[N, T, h, w]: pytorch-grad-cam's class for `method` at `layer`, at the layer's own resolution.

    As training.explain.reference.package_cams, for a layer of any module: the package resizes its
    map to a target size with cv2, which leaves a map of the feature map's own size untouched.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    base = getattr(pytorch_grad_cam, METHODS[method].package_class)
    shape: list[tuple[int, int]] = []
    handle = layer.register_forward_hook(lambda m, a, out: shape.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        handle.remove()
    fh, fw = shape[-1]

    class FeatureResolution(base):
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return int(fw), int(fh)

    explainer = FeatureResolution(model, [layer])
    try:
        columns = [
            explainer(images, [ClassifierOutputTarget(int(t)) for t in targets[:, j]]) for j in range(targets.shape[1])
        ]
    finally:
        explainer.activations_and_grads.release()
    return np.stack(columns, axis=1)


def float64_cams_at(model: nn.Module, path: str, images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Every gradient method's maps by autograd on a float64 copy of the module, at module `path`."""
    double = copy.deepcopy(model).double().eval()
    with TorchCAM(double, double.get_submodule(path)) as ref:
        return ref(torch.from_numpy(np.asarray(images, np.float64)), targets, list(CAM_OUTPUTS))


class _Probe:
    """One eager pass of the module: its logits, the maps of `paths`, and the input of the final
    Linear when that Linear makes the logits (the importer's embedding: what feeds the last Gemm)."""

    def __init__(self, model: nn.Module, paths: tuple[str, ...], images: np.ndarray) -> None:
        linears: list[tuple[torch.Tensor, torch.Tensor]] = []
        handles = [
            m.register_forward_hook(lambda m, args, out: linears.append((args[0], out)))
            for m in model.modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            with torch.no_grad():
                logits, *maps = MapsGraph(model, paths).eval()(torch.from_numpy(images))
        finally:
            for h in handles:
                h.remove()
        self.logits = logits.numpy()
        self.maps = {p: m.numpy() for p, m in zip(paths, maps, strict=True)}
        last = linears[-1] if linears else None
        self.embedding = last[0].numpy() if last is not None and last[1] is logits else None


def _held(name: str, got: np.ndarray, expected: np.ndarray, tolerance: float, images: int) -> float:
    diff = _max_diff(got, expected) if got.shape == expected.shape else float("inf")
    bound = tolerance * _scale(expected)
    if not diff <= bound:  # also catches NaN
        raise StriateError(
            f"parity check failed: onnxruntime and torch {name!r} differ by {diff:.3g} "
            f"(tolerance {bound:.3g}) on {images} real images"
        )
    return diff


def check_model_graph(
    folder: Path, model: nn.Module, paths: tuple[str, ...], images: np.ndarray, tolerance: float
) -> tuple[np.ndarray, dict[str, float]]:
    """model.onnx against the module: logits, embedding and every exported map. Returns (torch logits, diffs)."""
    probe = _Probe(model, paths, images)
    sess = session(folder / MODEL_FILE)
    outputs = {o.name for o in sess.get_outputs()}
    served = {p: map_name(map_output_name(p)) for p in paths}  # the importer's `<layer>_map` outputs
    names = [LOGITS, EMBEDDING, *served.values()]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise StriateError(f"model.onnx lacks the outputs {missing} for the layers {list(paths)}")
    got = dict(zip(names, sess.run(names, {IMAGE: images}), strict=True))
    n = len(images)
    diffs = {LOGITS: _held(LOGITS, got[LOGITS], probe.logits, tolerance, n)}
    for path, name in served.items():
        diffs[name] = _held(path, got[name], probe.maps[path], tolerance, n)
    # The importer's embedding: the final Linear's input, else the target map's global average.
    if probe.embedding is not None:
        embedding = probe.embedding
    elif paths:
        embedding = probe.maps[paths[0]].mean(axis=(2, 3))
    else:
        raise StriateError("cannot tell the model's embedding (no final Linear, no target layer): name a target layer")
    diffs[EMBEDDING] = _held(EMBEDDING, got[EMBEDDING], embedding, tolerance, n)
    return probe.logits, diffs


def check_explain_graph(
    path: Path, model: nn.Module, target: str, images: np.ndarray, logits: np.ndarray, tolerance: float
) -> tuple[float, tuple[MethodParity, ...]]:
    """explain.onnx against pytorch-grad-cam at module `target`: (logits diff, per-method parity); raises on a miss."""
    sess = session(path)
    targets = parity_targets(len(images), logits.shape[1])
    names = [LOGITS, EXPLAINED, *CAM_OUTPUTS.values()]
    out = dict(zip(names, sess.run(names, {IMAGE: images, TARGETS: targets}), strict=True))
    order = np.argsort(-logits, axis=1, kind="stable")
    expected = np.where(targets < 0, np.take_along_axis(order, np.clip(-targets - 1, 0, None), 1), targets)
    chosen = out[EXPLAINED]
    if not np.array_equal(chosen[:, 2], expected[:, 2]):
        raise StriateError(f"explain.onnx explained classes {chosen[:, 2]} instead of {expected[:, 2]}")
    logits_diff = _max_diff(out[LOGITS], logits)
    if not logits_diff <= tolerance * _scale(logits):
        raise StriateError(f"parity check failed: explain.onnx logits differ from torch by {logits_diff:.3g}")
    x = torch.from_numpy(images)
    layer = model.get_submodule(target)
    results = []
    reference64: dict[str, np.ndarray] | None = None
    for method, output in CAM_OUTPUTS.items():
        package = package_cams_at(model, layer, x, method, chosen)
        result = MethodParity(method=method, max_abs_diff=_max_diff(out[output], package), tolerance=tolerance)
        if not result.max_abs_diff <= tolerance:
            reference64 = reference64 or float64_cams_at(model, target, images, chosen)
            result = result.model_copy(
                update={
                    "float64_diff": _max_diff(out[output], reference64[method]),
                    "package_float64_diff": _max_diff(package, reference64[method]),
                }
            )
        if not result.passed:
            raise StriateError(
                f"parity check failed: {METHODS[method].title} in onnxruntime differs from pytorch-grad-cam's "
                f"{METHODS[method].package_class} by {result.max_abs_diff:.3g} (tolerance {tolerance:g}) "
                f"at {target!r} on {len(images)} real images"
            )
        results.append(result)
    return logits_diff, tuple(results)


def check_bundle(
    folder: Path, model: nn.Module, target: str | None, stages: tuple[str, ...], images: np.ndarray
) -> tuple[Parity, tuple[MethodParity, ...]]:
    """Both graphs in `folder` against the module on `images`; the explain graph only if it was written."""
    model.eval()
    paths = tuple(dict.fromkeys(([target] if target else []) + list(stages)))
    logits, diffs = check_model_graph(folder, model, paths, images, TOLERANCE)
    method_parity: tuple[MethodParity, ...] = ()
    cam_diff = None
    if target is not None and (folder / EXPLAIN_FILE).is_file():
        explain_logits, method_parity = check_explain_graph(
            folder / EXPLAIN_FILE, model, target, images, logits, TOLERANCE
        )
        diffs[LOGITS] = max(diffs[LOGITS], explain_logits)
        cam_diff = next(p.max_abs_diff for p in method_parity if p.method == "gradcam")
    parity = Parity(
        images=len(images),
        max_abs_diff_logits=diffs[LOGITS],
        max_abs_diff_embedding=diffs[EMBEDDING],
        max_abs_diff_cam=cam_diff,
        tolerance=TOLERANCE,
    )
    return parity, method_parity
