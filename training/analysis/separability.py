"""Class separability after each layer: t-SNE panels plus numbers that measure it.

Per layer: the silhouette score of the classes in feature space (euclidean; 1 = tight, well
separated classes, ~0 = overlapping), the cross-validated k-NN accuracy (how well a sample's
nearest neighbours in that space share its class) and the cross-validated accuracy of a linear
probe (standardised features + logistic regression: can one dense layer separate the classes?).
All are computed on the layer's features, not on the 2-D projection, so "deeper layers separate
classes better" is measured, not eyeballed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from striate.errors import StriateError

from .plots import class_colors, grid_shape, new_figure, save_figure


@dataclass(frozen=True)
class LayerSeparability:
    layer: str
    dim: int
    silhouette: float
    knn_accuracy: float
    linear_accuracy: float
    knn_k: int
    folds: int


def layer_separability(
    features: np.ndarray, y: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0
) -> tuple[float, float, float, int]:
    """(silhouette, k-NN accuracy, linear-probe accuracy, folds used) of the classes `y` in
    `features`; both accuracies are stratified-k-fold cross-validated."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError("separability needs at least two classes in the sample")
    sil = float(silhouette_score(x, y, metric="euclidean")) if len(x) > len(classes) else float("nan")
    folds = int(min(folds, counts.min()))
    if folds < 2:
        return sil, float("nan"), float("nan"), folds
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    knn = KNeighborsClassifier(n_neighbors=min(k, int(len(x) * (folds - 1) / folds)))
    knn_acc = float(cross_val_score(knn, x, y, cv=cv, scoring="accuracy").mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    linear_acc = float(cross_val_score(probe, x, y, cv=cv, scoring="accuracy").mean())
    return sil, knn_acc, linear_acc, folds


def separability_scores(
    features: dict[str, np.ndarray], y: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0
) -> list[LayerSeparability]:
    """One `LayerSeparability` per layer, in the order given."""
    out = []
    for name, feats in features.items():
        sil, knn_acc, linear_acc, used = layer_separability(feats, y, k=k, folds=folds, seed=seed)
        out.append(LayerSeparability(name, int(np.prod(feats.shape[1:])), sil, knn_acc, linear_acc, k, used))
    return out


def merge_identical(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge consecutive layers with identical features under one name "a = b".

    E.g. a ResNet's embedding is exactly its last stage's pooled features: drawn once, not twice.
    """
    out: dict[str, np.ndarray] = {}
    for name, feats in features.items():
        if out:
            last = next(reversed(out))
            prev = out[last]
            if prev.shape == feats.shape and np.allclose(prev, feats, rtol=1e-5, atol=1e-6):
                out[f"{last} = {name}"] = out.pop(last)
                continue
        out[name] = feats
    return out


MIN_IMAGES = 3  # t-SNE's perplexity (at least 2 here) must stay below the number of points


def tsne_2d(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (PCA to 50 dims first when wider, the usual speed-up)."""
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500).fit_transform(x)


def plot_separability(
    points: dict[str, np.ndarray],
    y: np.ndarray,
    labels: list[str],
    scores: list[LayerSeparability],
    path: str | Path,
    title: str = "",
) -> Path:
    """One panel per layer (3.6 x 3.6 in each, up to 5 per row, + 1.2 in for the legend and 0.4 in
    for a title), points coloured by class."""
    rows, cols = grid_shape(len(points), max_cols=5)
    fig = new_figure(3.6 * cols + 1.2, 3.6 * rows + (0.4 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colors = class_colors(len(labels))
    by_layer = {s.layer: s for s in scores}
    present = sorted(set(np.asarray(y).tolist()))
    for ax, (name, pts) in zip(axes, points.items(), strict=False):
        for c in present:
            mask = y == c
            ax.scatter(pts[mask, 0], pts[mask, 1], s=6, color=colors[c], label=labels[c], alpha=0.8, linewidths=0)
        s = by_layer.get(name)
        sub = (
            f"\nsilhouette {s.silhouette:.2f} · {s.knn_k}-NN {s.knn_accuracy:.3f} · linear {s.linear_accuracy:.3f}"
            if s
            else ""
        )
        ax.set_title(f"{name} ({s.dim if s else pts.shape[1]}-d){sub}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(points) :]:
        ax.axis("off")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside right center",
        markerscale=2.5,
        title="class",
        fontsize=8 if len(labels) <= 20 else 6,
    )
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def write_scores(scores: list[LayerSeparability], out_dir: str | Path) -> tuple[Path, Path]:
    """separability.csv and separability.json in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "separability.csv", out_dir / "separability.json"
    rows = [asdict(s) for s in scores]
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def run_separability(
    features: dict[str, np.ndarray],
    y: np.ndarray,
    labels: list[str],
    out_dir: str | Path,
    perplexity: float = 30.0,
    k: int = 5,
    folds: int = 5,
    seed: int = 0,
    title: str = "",
) -> list[LayerSeparability]:
    """Scores, t-SNE figure (separability.png) and tables for every layer in `features`."""
    if len(y) < MIN_IMAGES:
        raise StriateError(
            f"separability needs at least {MIN_IMAGES} images to map, the sample has {len(y)}: give more data"
        )
    scores = separability_scores(features, y, k=k, folds=folds, seed=seed)
    points = {name: tsne_2d(f, perplexity=perplexity, seed=seed) for name, f in features.items()}
    plot_separability(points, np.asarray(y), labels, scores, Path(out_dir) / "separability.png", title=title)
    write_scores(scores, out_dir)
    return scores
