"""An imported bundle checks itself when no source model is at hand.

- model.onnx against the source graph, on real images: the logits (the scores it computed) and
  the embedding, so the graph surgery changed no number;
- the reverse pass against pytorch-grad-cam itself: the head's forward (`HeadFunction`, held to
  onnxruntime's logits above) is a torch module whose input is the target map, so pytorch-grad-cam
  takes autograd gradients through it and applies its own formulas; explain.onnx must match each
  method's maps within `TOLERANCE` (or, where float32 rounding alone exceeds it, be no farther than
  pytorch-grad-cam from a float64 reference, as the exporter's parity check allows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.errors import StriateError
from striate.explain.methods import METHODS
from striate.manifest import MethodParity, Parity, Preprocessing
from training.export import images as real
from training.export.onnx_export import EXPLAIN_FILE, MODEL_FILE
from training.export.parity import TOLERANCE, parity_targets, session
from training.export.wrappers import CAM_OUTPUTS, EMBEDDING, EXPLAINED, IMAGE, LOGITS, TARGETS

from .reverse import HeadFunction
from .tensors import run

PARITY_IMAGES = 8
SOURCE_REFERENCE = "the source ONNX graph (maps: pytorch-grad-cam on its head)"


@dataclass(frozen=True)
class CheckResult:
    """What a check of the written graphs found, recorded in the manifest."""

    parity: Parity
    method_parity: tuple[MethodParity, ...] = ()


class _Entry(nn.Module):
    """The head's input as a layer pytorch-grad-cam can hook: a leaf that requires grad."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.detach().clone().requires_grad_(True)


class HeadModel(nn.Module):
    """target map -> scores, with `entry` the target layer for pytorch-grad-cam."""

    def __init__(self, head: HeadFunction) -> None:
        super().__init__()
        self.entry = _Entry()
        self.head = head

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.entry(a))


def package_head_cams(head: HeadFunction, a: np.ndarray, method: str, targets: np.ndarray) -> np.ndarray:
    """[N, T, h, w]: pytorch-grad-cam's class for `method` on the head, at the map's own resolution."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = HeadModel(head).eval()
    explainer = getattr(pytorch_grad_cam, METHODS[method].package_class)(model, [model.entry])
    try:
        x = torch.from_numpy(np.ascontiguousarray(a))
        columns = [
            explainer(x, [ClassifierOutputTarget(int(t)) for t in targets[:, j]]) for j in range(targets.shape[1])
        ]
    finally:
        explainer.activations_and_grads.release()
    return np.stack(columns, axis=1)


def float64_head_cams(head: HeadFunction, a: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Our CAM formulas (training/explain/cams.py) on autograd gradients of a float64 copy of the head."""
    from training.explain.reference import TorchCAM

    model = HeadModel(copy.deepcopy(head).double()).eval()
    with TorchCAM(model, model.entry) as ref:
        return ref(torch.from_numpy(a.astype(np.float64)), targets, list(CAM_OUTPUTS))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0


def _bound(reference: np.ndarray) -> float:
    return TOLERANCE * max(1.0, float(np.max(np.abs(reference)))) if reference.size else TOLERANCE


def method_parity(
    head: HeadFunction, a: np.ndarray, chosen: np.ndarray, maps: dict[str, np.ndarray]
) -> tuple[MethodParity, ...]:
    """explain.onnx's maps (`maps`, by output name) against pytorch-grad-cam on the head; raise when over."""
    results, reference64 = [], None
    for method, output in CAM_OUTPUTS.items():
        package = package_head_cams(head, a, method, chosen)
        result = MethodParity(method=method, max_abs_diff=_max_diff(maps[output], package), tolerance=TOLERANCE)
        if not result.passed:
            reference64 = reference64 or float64_head_cams(head, a, chosen)
            result = result.model_copy(
                update={
                    "float64_diff": _max_diff(maps[output], reference64[method]),
                    "package_float64_diff": _max_diff(package, reference64[method]),
                }
            )
        if not result.passed:
            raise StriateError(
                f"self-check failed: {METHODS[method].title} in onnxruntime differs from pytorch-grad-cam's "
                f"{METHODS[method].package_class} on the imported head by {result.max_abs_diff:.3g} "
                f"(tolerance {TOLERANCE:g})"
            )
        results.append(result)
    return tuple(results)


def self_check(
    folder: Path,
    source,
    scores: str,
    embedding: str | None,
    map_output: str,
    head: HeadFunction | None,
    preprocessing: Preprocessing,
) -> CheckResult:
    """Check model.onnx (and explain.onnx, when `head` is given) in `folder` against the prepared source graph."""
    images = real.real_batch(preprocessing, PARITY_IMAGES)
    want = run(source, [scores, *([embedding] if embedding else [])], images)
    model = session(folder / MODEL_FILE)
    got = dict(zip([o.name for o in model.get_outputs()], model.run(None, {IMAGE: images}), strict=True))
    a = got[map_output]
    expected_embedding = want[embedding] if embedding else a.mean(axis=(2, 3))
    logits_diff = _max_diff(got[LOGITS], want[scores])
    embedding_diff = _max_diff(got[EMBEDDING], expected_embedding)
    methods: tuple[MethodParity, ...] = ()
    if head is not None:
        explain = session(folder / EXPLAIN_FILE)
        targets = parity_targets(len(images), got[LOGITS].shape[1])
        names = [o.name for o in explain.get_outputs()]
        out = dict(zip(names, explain.run(None, {IMAGE: images, TARGETS: targets}), strict=True))
        logits_diff = max(logits_diff, _max_diff(out[LOGITS], got[LOGITS]))
        with torch.no_grad():
            head_diff = _max_diff(head(torch.from_numpy(a)).numpy(), want[scores])
        if not head_diff <= _bound(want[scores]):
            raise StriateError(
                f"self-check failed: the reverse pass's forward differs from the graph by {head_diff:.3g}"
            )
        methods = method_parity(head, a, out[EXPLAINED], out)
    for what, value, ref in (("logits", logits_diff, want[scores]), ("embedding", embedding_diff, expected_embedding)):
        if not value <= _bound(ref):
            raise StriateError(f"self-check failed: the bundle's {what} differ from the source graph's by {value:.3g}")
    parity = Parity(
        images=len(images),
        max_abs_diff_logits=logits_diff,
        max_abs_diff_embedding=embedding_diff,
        max_abs_diff_cam=methods[0].max_abs_diff if methods else None,
        tolerance=TOLERANCE,
        reference=SOURCE_REFERENCE,
    )
    return CheckResult(parity, methods)
