"""Pictures for clients: Grad-CAM heatmaps and overlays, activation-map grids (Pillow + NumPy)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from striate.manifest import Preprocessing

# Five viridis anchors, linearly interpolated: enough for a readable, perceptually ordered map.
_VIRIDIS = np.array(
    [[0.267, 0.005, 0.329], [0.229, 0.322, 0.545], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]]
)


def jet(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 RGB with the "jet" map (the usual Grad-CAM palette)."""
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def viridis(values: np.ndarray) -> np.ndarray:
    x = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(_VIRIDIS) - 2)
    frac = (x - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[lo + 1] * frac
    return np.rint(rgb * 255.0).astype(np.uint8)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def model_view_box(size: tuple[int, int], spec: Preprocessing) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the original image region the model saw after resize + crop."""
    w, h = size
    if spec.resize_mode == "exact":
        rh, rw = spec.resize_size
    else:
        shorter = spec.resize_size[0]
        rw, rh = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    ch, cw = spec.crop_size
    left, top = round((rw - cw) / 2.0), round((rh - ch) / 2.0)
    sx, sy = w / rw, h / rh
    return (max(0.0, left * sx), max(0.0, top * sy), min(w, (left + cw) * sx), min(h, (top + ch) * sy))


def cam_on_image(cam: np.ndarray, size: tuple[int, int], spec: Preprocessing) -> np.ndarray:
    """Resize a [h, w] cam (bilinear) onto the image's `size` (W, H), zero outside what the model saw."""
    w, h = size
    left, top, right, bottom = (round(v) for v in model_view_box(size, spec))
    out = np.zeros((h, w), dtype=np.float32)
    bw, bh = max(1, right - left), max(1, bottom - top)
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((bw, bh), Image.Resampling.BILINEAR)
    region = np.clip(np.asarray(resized), 0.0, 1.0)
    out[top : top + bh, left : left + bw] = region[: h - top, : w - left]
    return out


def heatmap_png(cam: np.ndarray, size: tuple[int, int], spec: Preprocessing) -> bytes:
    return png_bytes(Image.fromarray(jet(cam_on_image(cam, size, spec)), mode="RGB"))


def overlay_png(cam: np.ndarray, image: Image.Image, spec: Preprocessing, alpha: float = 0.5) -> bytes:
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = jet(cam_on_image(cam, image.size, spec)).astype(np.float32)
    mixed = np.rint((1.0 - alpha) * base + alpha * heat).astype(np.uint8)
    return png_bytes(Image.fromarray(mixed, mode="RGB"))


def activation_grid_png(maps: np.ndarray, min_tile: int = 48, pad: int = 2) -> bytes:
    """[C, h, w] feature maps -> one PNG grid, each channel scaled to its own [0, 1] range."""
    c, h, w = maps.shape
    scale = max(1, math.ceil(min_tile / max(1, min(h, w))))
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    th, tw = h * scale, w * scale
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    norm = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0)
    tiles = viridis(norm.repeat(scale, axis=1).repeat(scale, axis=2))
    for i in range(c):
        r, k = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + k * (tw + pad)
        grid[y : y + th, x : x + tw] = tiles[i]
    return png_bytes(Image.fromarray(grid, mode="RGB"))
