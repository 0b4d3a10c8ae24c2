"""Batches of forward passes, described so that any runner can execute them in chunks.

A gradient-free method or a faithfulness score is a `Passes`: how many perturbed inputs it needs,
a function that makes any slice of them (so that no more than a chunk is ever in memory), and a
function that turns the model's logits on all of them into the answer. The service runs the
chunks through its dynamic batcher (async); analysis runs them in a loop (`run_passes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LogitsFn = Callable[[np.ndarray], np.ndarray]  # [n, C, H, W] float32 -> [n, K] logits


@dataclass
class Passes:
    count: int
    make: Callable[[int, int], np.ndarray]  # (start, stop) -> inputs [stop - start, C, H, W]
    finish: Callable[[np.ndarray], Any]  # logits [count, K] -> result

    def chunks(self, size: int) -> list[tuple[int, int]]:
        return [(i, min(i + size, self.count)) for i in range(0, self.count, max(1, size))]


def run_passes(passes: Passes, logits_fn: LogitsFn, chunk: int = 64) -> Any:
    """Run `passes` synchronously, `chunk` inputs at a time."""
    if passes.count == 0:
        return passes.finish(np.zeros((0, 0), np.float32))
    logits = [logits_fn(np.ascontiguousarray(passes.make(a, b), dtype=np.float32)) for a, b in passes.chunks(chunk)]
    return passes.finish(np.concatenate(logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [H, W] bilinear (Pillow, float32), as maps are drawn and perturbed at input size."""
    from PIL import Image

    h, w = size
    if cam.shape == (h, w):
        return cam.astype(np.float32)
    img = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def scale_map(cam: np.ndarray) -> np.ndarray:
    """Min-max scaling of [..., h, w] maps to [0, 1], as pytorch-grad-cam's scale_cam_image."""
    cam = cam - cam.min(axis=(-2, -1), keepdims=True)
    return (cam / (1e-7 + cam.max(axis=(-2, -1), keepdims=True))).astype(np.float32)


def unit_range(maps: np.ndarray) -> np.ndarray:
    """Each [h, w] map of [..., h, w] stretched to exactly [0, 1] (all zeros when flat)."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
