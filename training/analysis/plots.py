"""Shared matplotlib helpers: Agg backend (no display), PNG files of a known pixel size.

Figures are saved without `bbox_inches="tight"` so a figure of `figsize` inches at `DPI` is exactly
`figsize * DPI` pixels: callers (and tests) can rely on the size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure

DPI = 100


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure of `width_in x height_in` inches (pixels = inches * DPI), not tied to pyplot state."""
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at `DPI` and return the path (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """Rows and columns for `n` panels, at most `max_cols` wide."""
    cols = max(1, min(n, max_cols))
    return int(np.ceil(n / cols)), cols


def class_colors(n: int) -> list:
    """`n` distinguishable colours (tab10, then tab20, then a continuous map)."""
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
    elif n <= 20:
        cmap = matplotlib.colormaps["tab20"]
    else:
        cmap = matplotlib.colormaps["gist_ncar"]
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [cmap(i) for i in range(n)]


def image_for_display(chw: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A [C, H, W] (normalised) tensor -> an array imshow can draw, scaled to [0, 1], and a cmap."""
    arr = np.asarray(chw, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if arr.shape[0] == 1:
        return arr[0], "gray"
    return arr[:3].transpose(1, 2, 0), None
