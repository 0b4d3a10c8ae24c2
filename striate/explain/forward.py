"""Gradient-free methods: maps from forward passes only, so that every bundle can be explained.

Each takes one preprocessed image x [C, H, W] and the classes to explain, and returns `Passes`
whose answer is one map per target, [T, h, w] in [0, 1]:

- Score-CAM (Wang et al. 2020; pytorch-grad-cam's ScoreCAM): each channel of the target layer's
  map, upsampled to the input and min-max scaled, multiplies the input; the softmax over channels
  of the target's logit on those inputs weighs the channels. One pass per channel.
- Occlusion (Zeiler & Fergus): a patch filled with the image mean slides over the input; a pixel's
  value is the mean drop of the target's probability over the patches covering it.
- RISE (Petsiuk et al. 2018): random low-resolution binary masks, upsampled with a random shift;
  the map is the masks averaged, each weighted by the target's probability on the masked input.
- Eigen-CAM (Muhammad & Yilmaz; pytorch-grad-cam's EigenCAM): the target layer's map projected on
  its first principal component. Class-independent, no passes beyond the one giving the map.
"""

from __future__ import annotations

import numpy as np

from .passes import Passes, resize_map, scale_map, softmax, unit_range

RISE_MASKS = 512  # masks per image
RISE_CELLS = 7  # mask resolution before upsampling (cells per side)
RISE_KEEP = 0.5  # probability that a cell is kept
SEED = 0  # the same request gives the same map


def _torch_bilinear_align_corners(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[K, h, w] -> [K, H, W] as torch.nn.UpsamplingBilinear2d (align_corners=True), which ScoreCAM uses."""
    _, h, w = maps.shape
    big_h, big_w = size

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * ((n_in - 1) / (n_out - 1))
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, big_h)
    x0, x1, fx = axis(w, big_w)
    top = maps[:, y0][:, :, x0] * (1 - fx) + maps[:, y0][:, :, x1] * fx
    bottom = maps[:, y1][:, :, x0] * (1 - fx) + maps[:, y1][:, :, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def score_cam(x: np.ndarray, activations: np.ndarray, targets: np.ndarray) -> Passes:
    """Score-CAM of `x` [C, H, W] from the target layer's `activations` [K, h, w]; maps [T, h, w].

    Channels that give the same masked input share one pass, which changes no number: a constant
    channel (a dead one, all zeros after ReLU, is common) masks the whole input to zero, and two
    channels whose min-max scaled maps are equal (one a positive multiple of the other plus a
    constant, such as two one-hot maps on the same cell) give the same mask. The masks are made
    chunk by chunk (at 224 px, all of them at once would take ~100 MB).
    """
    acts = activations.astype(np.float32)
    flat = acts.reshape(len(acts), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    varying = np.flatnonzero(hi > lo)
    scaled = (flat[varying].astype(np.float64) - lo[varying, None]) / (hi - lo)[varying, None].astype(np.float64)
    _, first, group = np.unique(scaled, axis=0, return_index=True, return_inverse=True)
    distinct = varying[first]  # one channel per distinct mask; group[i]: the mask of varying[i]
    constant = len(varying) < len(acts)

    def make(a: int, b: int) -> np.ndarray:
        channels = distinct[a : min(b, len(distinct))]
        up = _torch_bilinear_align_corners(acts[channels], x.shape[1:])
        lo_up = up.min(axis=(1, 2), keepdims=True)
        hi_up = up.max(axis=(1, 2), keepdims=True)
        out = x[None] * ((up - lo_up) / (hi_up - lo_up + 1e-8))[:, None]
        if b > len(distinct):  # the last pass: the all-zero input of the constant channels
            out = np.concatenate([out, np.zeros_like(x)[None]])
        return out

    def finish(logits: np.ndarray) -> np.ndarray:
        per_channel = np.empty((len(acts), logits.shape[1]), logits.dtype)
        if constant:
            per_channel[:] = logits[-1]
        per_channel[varying] = logits[: len(distinct)][group.reshape(-1)]
        weights = softmax(per_channel[:, targets].T)  # [T, K]: softmax over channels of the target's logit
        cam = np.maximum(np.einsum("tk,khw->thw", weights, acts), 0.0)
        return scale_map(scale_map(cam))

    return Passes(len(distinct) + int(constant), make, finish)


def eigen_cam(activations: np.ndarray, num_targets: int) -> np.ndarray:
    """Eigen-CAM [T, h, w] (the same map for every target) from `activations` [K, h, w]."""
    a = np.nan_to_num(activations.astype(np.float32))
    flat = a.reshape(a.shape[0], -1).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=True)
    projection = (flat @ vt[0, :]).reshape(a.shape[1:])
    cam = scale_map(scale_map(np.maximum(projection, 0.0)))
    return np.repeat(cam[None], num_targets, axis=0)


def _windows(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:  # cover the last rows/columns too
        starts.append(size - patch)
    return starts


def occlusion_boxes(shape: tuple[int, int], patch: int | None = None, stride: int | None = None) -> list[tuple]:
    """(top, left, height, width) of every patch position; default patch: 1/8 of the side, stride half."""
    h, w = shape
    patch = patch or max(1, min(h, w) // 8)
    stride = stride or max(1, patch // 2)
    ph, pw = min(patch, h), min(patch, w)
    return [(t, left, ph, pw) for t in _windows(h, ph, stride) for left in _windows(w, pw, stride)]


def occlusion(x: np.ndarray, targets: np.ndarray, patch: int | None = None, stride: int | None = None) -> Passes:
    """Occlusion maps [T, H, W] of `x` [C, H, W]: pass 0 is the image itself, then one per patch."""
    boxes = occlusion_boxes(x.shape[1:], patch, stride)
    fill = x.mean(axis=(1, 2), keepdims=True)

    def make(a: int, b: int) -> np.ndarray:
        out = np.repeat(x[None], b - a, axis=0)
        for j, i in enumerate(range(a, b)):
            if i > 0:
                t, left, ph, pw = boxes[i - 1]
                out[j, :, t : t + ph, left : left + pw] = fill
        return out

    def finish(logits: np.ndarray) -> np.ndarray:
        probs = softmax(logits)[:, targets]  # [1 + boxes, T]
        drops = probs[0] - probs[1:]
        total = np.zeros((len(targets), *x.shape[1:]), np.float64)
        count = np.zeros(x.shape[1:], np.float64)
        for (t, left, ph, pw), d in zip(boxes, drops, strict=True):
            total[:, t : t + ph, left : left + pw] += d[:, None, None]
            count[t : t + ph, left : left + pw] += 1
        return unit_range(np.maximum(total / np.maximum(count, 1), 0.0))

    return Passes(1 + len(boxes), make, finish)


def rise_mask(shape: tuple[int, int], index: int, seed: int = SEED) -> np.ndarray:
    """Mask number `index` [H, W] in [0, 1]: RISE's random cells, upsampled and randomly shifted.

    Each mask has its own random stream, so any slice of them can be made alone (chunk by chunk).
    """
    h, w = shape
    rng = np.random.default_rng([seed, index])
    cell_h, cell_w = -(-h // RISE_CELLS), -(-w // RISE_CELLS)
    grid = (rng.random((RISE_CELLS, RISE_CELLS)) < RISE_KEEP).astype(np.float32)
    up = resize_map(grid, ((RISE_CELLS + 1) * cell_h, (RISE_CELLS + 1) * cell_w))
    dy, dx = rng.integers(0, [cell_h, cell_w])
    return up[dy : dy + h, dx : dx + w]


def rise(x: np.ndarray, targets: np.ndarray, count: int = RISE_MASKS) -> Passes:
    """RISE maps [T, H, W] of `x` [C, H, W]: masked inputs keep the image where the mask is 1."""
    fill = x.mean(axis=(1, 2), keepdims=True)
    shape = x.shape[1:]

    def make(a: int, b: int) -> np.ndarray:
        m = np.stack([rise_mask(shape, i) for i in range(a, b)])[:, None]
        return x[None] * m + fill * (1 - m)

    def finish(logits: np.ndarray) -> np.ndarray:
        probs = softmax(logits)[:, targets]  # [count, T]
        sal = np.zeros((len(targets), *shape), np.float64)
        for i in range(count):
            sal += probs[i][:, None, None] * rise_mask(shape, i)
        return unit_range(sal / (count * RISE_KEEP))

    return Passes(count, make, finish)
