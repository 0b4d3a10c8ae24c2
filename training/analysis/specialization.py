"""Neuron specialization in one layer: which neurons tell one class from the others.

For every neuron (a pooled channel or a dense unit) and class: the ROC AUC of its activation for
"this class vs the rest" (1 = fires only for the class, 0.5 = blind to it, 0 = silent only for it)
and the Fisher score (mu_c - mu_rest)^2 / (var_c + var_rest). The neurons themselves are projected
to 2-D by MDS on the dissimilarity 1 - corr(activation patterns over the images), so neurons that
respond alike sit together; colouring that map by AUC shows groups specialising in a class.
"""

from __future__ import annotations

import csv
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from scipy.stats import rankdata
from sklearn.manifold import MDS

from .plots import class_colors, new_figure, save_figure


def class_auc(features: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """[D, K] one-vs-rest ROC AUC of each neuron for each class (Mann-Whitney U, ties averaged).

    Classes absent from `y` (or covering all of it) get NaN.
    """
    x = np.asarray(features, dtype=np.float64)
    ranks = rankdata(x, axis=0)  # [N, D], average ranks for ties
    out = np.full((x.shape[1], n_classes), np.nan)
    for c in range(n_classes):
        pos = np.asarray(y) == c
        n1, n0 = int(pos.sum()), int((~pos).sum())
        if n1 and n0:
            out[:, c] = (ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return out


def class_fisher(features: np.ndarray, y: np.ndarray, n_classes: int, eps: float = 1e-12) -> np.ndarray:
    """[D, K] Fisher score of each neuron for each class versus the rest."""
    x = np.asarray(features, dtype=np.float64)
    out = np.full((x.shape[1], n_classes), np.nan)
    for c in range(n_classes):
        pos = np.asarray(y) == c
        if pos.any() and (~pos).any():
            a, b = x[pos], x[~pos]
            out[:, c] = (a.mean(0) - b.mean(0)) ** 2 / (a.var(0) + b.var(0) + eps)
    return out


def neuron_dissimilarity(features: np.ndarray) -> np.ndarray:
    """[D, D] 1 - Pearson correlation of the neurons' activation patterns (dead neurons: 1)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    norm = np.linalg.norm(x, axis=0)
    alive = norm > 1e-12
    z = np.zeros_like(x)
    z[:, alive] = x[:, alive] / norm[alive]
    corr = np.clip(z.T @ z, -1.0, 1.0)
    dis = 1.0 - corr
    np.fill_diagonal(dis, 0.0)
    return (dis + dis.T) / 2.0


def neuron_mds(features: np.ndarray, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """[D, 2] metric MDS of the neurons on `neuron_dissimilarity`."""
    dis = neuron_dissimilarity(features)
    params = inspect.signature(MDS).parameters
    kw: dict = {"n_components": 2, "random_state": seed, "max_iter": max_iter}
    if "metric_mds" in params:  # scikit-learn >= 1.8
        kw.update(metric="precomputed", metric_mds=True, init="classical_mds")
    else:
        kw.update(dissimilarity="precomputed", n_init=1)
    return MDS(**kw).fit_transform(dis)


@dataclass
class Specialization:
    layer: str
    labels: list[str]
    target: int  # the class the figure is coloured by
    auc: np.ndarray  # [D, K]
    fisher: np.ndarray  # [D, K]
    mean: np.ndarray  # [D] mean activation
    dead: np.ndarray  # [D] bool: constant over the sample
    mds: np.ndarray  # [D, 2]

    @property
    def best_class(self) -> np.ndarray:
        """Each neuron's preferred class: the one its activation separates best (AUC closest to 1)."""
        return np.nanargmax(np.nan_to_num(self.auc, nan=-1.0), axis=1)


def analyse_layer(
    features: np.ndarray, y: np.ndarray, labels: list[str], target: int, layer: str = "", seed: int = 0
) -> Specialization:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    k = len(labels)
    dead = x.std(0) < 1e-12
    mds = np.full((x.shape[1], 2), np.nan)  # dead neurons have no activation pattern to place
    if (~dead).sum() >= 3:
        mds[~dead] = neuron_mds(x[:, ~dead], seed=seed)
    return Specialization(
        layer=layer,
        labels=list(labels),
        target=target,
        auc=class_auc(x, y, k),
        fisher=class_fisher(x, y, k),
        mean=x.mean(0),
        dead=dead,
        mds=mds,
    )


def plot_specialization(spec: Specialization, path: str | Path) -> Path:
    """Two MDS maps of the neurons (1300 x 560 px): coloured by AUC for the target class, and by
    each neuron's preferred class (marker size = how well it separates that class)."""
    fig = new_figure(13, 5.6)
    left, right = fig.subplots(1, 2)
    pts, alive = spec.mds, ~spec.dead
    auc_t = spec.auc[:, spec.target]
    target = spec.labels[spec.target]
    order = np.argsort(np.abs(np.nan_to_num(auc_t, nan=0.5) - 0.5))  # most specialised drawn on top
    order = order[alive[order]]
    sc = left.scatter(
        pts[order, 0],
        pts[order, 1],
        c=auc_t[order],
        cmap="coolwarm",
        norm=Normalize(0.0, 1.0),
        s=28,
        edgecolors="k",
        linewidths=0.3,
    )
    fig.colorbar(sc, ax=left, label=f"AUC for class {target} vs rest")
    left.set_title(
        f"{spec.layer}: {int(alive.sum())} neurons (MDS of 1 - correlation)\n"
        f"coloured by discriminative power for class {target}",
        fontsize=10,
    )
    best = spec.best_class
    best_auc = spec.auc[np.arange(len(best)), best]
    colors = class_colors(len(spec.labels))
    for c in range(len(spec.labels)):
        m = alive & (best == c)
        if m.any():
            right.scatter(
                pts[m, 0],
                pts[m, 1],
                color=colors[c],
                s=8 + 60 * np.clip((best_auc[m] - 0.5) * 2, 0, 1),
                label=spec.labels[c],
                edgecolors="k",
                linewidths=0.3,
            )
    right.set_title("coloured by each neuron's preferred class\n(size = its AUC for that class)", fontsize=10)
    if len(spec.labels) <= 20:
        right.legend(fontsize=7, title="class", loc="best", markerscale=1.0)
    if spec.dead.any():
        fig.suptitle(f"{int(spec.dead.sum())} dead neurons (constant over the sample) not shown", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)


def write_csv(spec: Specialization, path: str | Path) -> Path:
    """One row per neuron: AUC/Fisher for the target, preferred class, AUC for every class, MDS."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, target = spec.target, spec.labels[spec.target]
    best = spec.best_class
    header = [
        "neuron",
        f"auc_{target}",
        f"fisher_{target}",
        "best_class",
        "best_auc",
        "mean_activation",
        "dead",
        "mds_x",
        "mds_y",
        *(f"auc_class_{label}" for label in spec.labels),
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for j in range(len(spec.mean)):
            writer.writerow(
                [
                    j,
                    f"{spec.auc[j, t]:.6f}",
                    f"{spec.fisher[j, t]:.6f}",
                    spec.labels[best[j]],
                    f"{spec.auc[j, best[j]]:.6f}",
                    f"{spec.mean[j]:.6f}",
                    int(spec.dead[j]),
                    f"{spec.mds[j, 0]:.6f}",
                    f"{spec.mds[j, 1]:.6f}",
                    *(f"{a:.6f}" for a in spec.auc[j]),
                ]
            )
    return path


def run_specialization(
    features: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    target: int,
    out_dir: str | Path,
    layer: str = "",
    seed: int = 0,
) -> Specialization:
    """specialization.png and specialization.csv in `out_dir`."""
    spec = analyse_layer(features, y, labels, target, layer=layer, seed=seed)
    plot_specialization(spec, Path(out_dir) / "specialization.png")
    write_csv(spec, Path(out_dir) / "specialization.csv")
    return spec
