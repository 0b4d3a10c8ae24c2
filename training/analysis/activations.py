"""The feature maps of one layer for one image, as a grid figure (input image in the first cell)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import grid_shape, image_for_display, new_figure, save_figure

CELL_IN = 1.3  # inches per grid cell


def select_channels(maps: np.ndarray, max_channels: int, order: str = "mean") -> np.ndarray:
    """Indices of the channels to draw: all when they fit, else the `max_channels` most active
    (order="mean": by mean activation) or the first ones (order="index")."""
    c = maps.shape[0]
    if c <= max_channels or order == "index":
        return np.arange(min(c, max_channels))
    return np.sort(np.argsort(-maps.reshape(c, -1).mean(axis=1), kind="stable")[:max_channels])


def plot_activation_grid(
    image: np.ndarray,
    maps: np.ndarray,
    path: str | Path,
    layer: str = "",
    title: str = "",
    max_channels: int = 64,
    order: str = "mean",
    shared_scale: bool = False,
) -> Path:
    """Draw `maps` [C, h, w] of one image (after the input `image` [C, H, W]) as a grid.

    The figure is `cols * 1.3` x `rows * 1.3 + 0.5` inches with up to 8 columns. Each map has its
    own colour scale unless `shared_scale`, which makes channels comparable in magnitude.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"expected feature maps [C, h, w], got shape {maps.shape}")
    channels = select_channels(maps, max_channels, order)
    rows, cols = grid_shape(len(channels) + 1, max_cols=8)
    fig = new_figure(cols * CELL_IN, rows * CELL_IN + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    img, cmap = image_for_display(image)
    axes[0].imshow(img, cmap=cmap)
    axes[0].set_title("input", fontsize=7)
    vmin, vmax = (float(maps.min()), float(maps.max())) if shared_scale else (None, None)
    for ax, ch in zip(axes[1:], channels, strict=False):
        ax.imshow(maps[ch], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"#{ch} max {maps[ch].max():.2g}", fontsize=6)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(channels) + 1 :]:
        ax.axis("off")
    c, h, w = maps.shape
    shown = "" if len(channels) == c else f", {len(channels)} most active shown"
    fig.suptitle(title or f"{layer}: {c} maps of {h}x{w}{shown}", fontsize=9)
    return save_figure(fig, path)
