"""The export's self-check for any classifier: onnxruntime against the torch module, and every
gradient method in the explain graph against pytorch-grad-cam on the module itself.

It runs on the importer's staging folder before the bundle lands (`import_onnx(check=...)`), so a
miss refuses the bundle and leaves nothing behind. The bounds are the zoo exporter's
(`training.export.parity.TOLERANCE`, relative beyond 1 for logits and maps), and a map over the
bound is judged against a float64 reference exactly as for zoo models (`MethodParity.passed`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.errors import StriateError
from striate.manifest import MethodParity, Parity
from training.export.onnx_export import EXPLAIN_FILE, MODEL_FILE
from training.export.parity import TOLERANCE, check_explain_parity, raise_on_missed, session
from training.export.wrappers import EMBEDDING, IMAGE, LOGITS, map_name

from .graph import MapsGraph, map_output_name


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0


def _scale(reference: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0


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
    methods = check_explain_parity(path, model, images, logits, tolerance, layer_path=target)
    logits_diff = methods.pop(LOGITS).max_abs_diff
    if not logits_diff <= tolerance * _scale(logits):
        raise StriateError(f"parity check failed: explain.onnx logits differ from torch by {logits_diff:.3g}")
    raise_on_missed(methods.values(), len(images), where=f" at {target!r}")
    return logits_diff, tuple(methods.values())


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
