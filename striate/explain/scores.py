"""Faithfulness scores of a map, from forward passes only (numpy, scipy; onnxruntime runs the model).

Each score perturbs the image according to the map (at input resolution, [H, W] in [0, 1]) and
reads the target's probability (softmax, as pytorch-grad-cam's ClassifierOutputSoftmaxTarget):

- road (Rong et al. 2022; pytorch-grad-cam's ROADCombined): for each percentile p of 10..90, remove
  the pixels above the p-th percentile of the map (most relevant first, MoRF) or of 1 - map (least
  relevant first, LeRF), filling them by noisy linear imputation from their neighbours; the score
  is the mean over percentiles of (LeRF change - MoRF change) / 2. Higher is more faithful.
- deletion / insertion (Petsiuk et al. 2018): remove (fill with the image mean) or insert (into a
  mean image) the pixels most relevant first, in `STEPS` equal steps; the area under the
  probability curve. Lower deletion and higher insertion are more faithful.
- drop (Chattopadhyay et al.; pytorch-grad-cam's DropInConfidence): the input multiplied by the
  map; max(0, p(x) - p(x * map)). Lower is more faithful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .passes import Passes, softmax

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default
STEPS = 16  # deletion / insertion steps


@dataclass(frozen=True)
class ScoreInfo:
    name: str
    title: str
    higher_is_better: bool


SCORES: dict[str, ScoreInfo] = {
    s.name: s
    for s in (
        ScoreInfo("road", "ROAD (LeRF - MoRF) / 2", True),
        ScoreInfo("deletion", "deletion AUC", False),
        ScoreInfo("insertion", "insertion AUC", True),
        ScoreInfo("drop", "drop in confidence", False),
    )
}

# (dy, dx) -> weight of a neighbour in the imputation (pytorch-grad-cam's neighbors_weights).
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def impute(x: np.ndarray, keep: np.ndarray, noise: float = ROAD_NOISE, rng: np.random.Generator | None = None):
    """`x` [C, H, W] with the pixels where `keep` [H, W] is 0 filled by noisy linear imputation:
    each removed pixel is the weighted mean of its neighbours (one sparse linear system), as
    pytorch-grad-cam's NoisyLinearImputer, plus `noise` * N(0, 1)."""
    from scipy.sparse import csc_matrix, lil_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = x.shape
    keep_flat = keep.reshape(-1)
    flat = x.reshape(c, -1).astype(np.float64)
    missing = np.flatnonzero(keep_flat == 0)
    if len(missing) == 0:
        return x.astype(np.float32)
    var_of = np.zeros(h * w, dtype=int)
    var_of[missing] = np.arange(len(missing))
    a = lil_matrix((len(missing), len(missing)))
    b = np.zeros((len(missing), c))
    total = np.ones(len(missing))
    rows, cols = missing // w, missing % w
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = rows + dy, cols + dx
        valid = (ny >= 0) & (nx >= 0) & (ny < h) & (nx < w)
        ids = np.flatnonzero(valid)
        coords = ny[valid] * w + nx[valid]
        known = keep_flat[coords] > 0.5
        b[ids[known]] -= weight * flat[:, coords[known]].T
        a[ids[~known], var_of[coords[~known]]] = weight
        total[~valid] -= weight
    a[np.arange(len(missing)), np.arange(len(missing))] = -total
    solved = np.asarray(spsolve(csc_matrix(a), b)).reshape(len(missing), c)
    out = flat.copy()
    out[:, missing] = solved.T
    if noise:
        out[:, missing] += noise * (rng or np.random.default_rng(0)).standard_normal((c, len(missing)))
    return out.reshape(c, h, w).astype(np.float32)


def _road_inputs(x: np.ndarray, cam: np.ndarray, noise: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for least_first in (False, True):
        ranked = 1 - cam if least_first else cam
        for p in ROAD_PERCENTILES:
            keep = (ranked < np.percentile(ranked, p)).astype(np.float32)
            out.append(impute(x, keep, noise, rng))
    return out


def _ranked_inputs(x: np.ndarray, cam: np.ndarray, insert: bool) -> list[np.ndarray]:
    fill = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
    order = np.argsort(-cam.ravel(), kind="stable")
    out = []
    for step in range(STEPS + 1):
        chosen = np.zeros(cam.size, bool)
        chosen[order[: round(step * cam.size / STEPS)]] = True
        chosen = chosen.reshape(cam.shape)[None]
        out.append(np.where(chosen, x, fill) if insert else np.where(chosen, fill, x))
    return out


def score_passes(name: str, x: np.ndarray, cam: np.ndarray, target: int, noise: float = ROAD_NOISE, seed: int = 0):
    """`Passes` computing score `name` of map `cam` [H, W] in [0, 1] for class `target` of `x` [C, H, W].

    Pass 0 is always the unperturbed image (the reference probability).
    """
    if name == "road":
        perturbed = _road_inputs(x, cam, noise, seed)
    elif name in ("deletion", "insertion"):
        perturbed = _ranked_inputs(x, cam, insert=name == "insertion")
    elif name == "drop":
        perturbed = [x * cam[None]]
    else:
        raise ValueError(f"unknown score {name!r}: {', '.join(SCORES)}")
    inputs = np.stack([x, *perturbed]).astype(np.float32)

    def finish(logits: np.ndarray) -> float:
        p = softmax(logits)[:, target].astype(np.float64)
        change = p[1:] - p[0]
        if name == "road":
            k = len(ROAD_PERCENTILES)
            return float((change[k:].mean() - change[:k].mean()) / 2)
        if name == "drop":
            return float(max(0.0, -change[0]))
        curve = p[1:]
        return float(((curve[1:] + curve[:-1]) / 2).mean())  # trapezoid over [0, 1]

    return Passes(len(inputs), lambda a, b: inputs[a:b], finish)


def score_pass_count(name: str) -> int:
    return 1 + {"road": 2 * len(ROAD_PERCENTILES), "deletion": STEPS + 1, "insertion": STEPS + 1, "drop": 1}[name]
