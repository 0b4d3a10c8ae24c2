"""Explanation gallery: every method on the same images, each map's faithfulness in its title.

Methods come from the one registry (striate.explain.methods) and the one implementation of each:
- gradient methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM): the bundle's explain graph
  in onnxruntime, or `TorchCAM` (training.explain, autograd) on a checkpoint;
- gradient-free methods (Score-CAM, Eigen-CAM, occlusion, RISE): striate.explain.forward, whose
  forward passes run here in a loop and in the service through its batcher.
Each map is scored with striate.explain.scores (ROAD by default). The gallery also draws the
curves behind ROAD (Rong et al. 2022): remove the top-k% most important pixels (noisy linear
imputation from their neighbours, or the image mean) and measure the drop in the predicted class's
probability ("MoRF"); removing the least important first ("LeRF") and random pixels are the
references. A faithful map drops the confidence more than random does under MoRF and less under
LeRF; `faithfulness = MoRF - LeRF` sums that up in one number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from striate.explain import forward
from striate.explain.methods import METHODS, canonical
from striate.explain.passes import resize_map, run_passes, scale_map
from striate.explain.scores import SCORES, impute, score_passes

from .extract import softmax
from .plots import image_for_display, new_figure, save_figure

LogitsFn = Callable[[np.ndarray], np.ndarray]  # [N, C, H, W] float32 -> [N, K] logits
ExplainFn = Callable[[np.ndarray, int], np.ndarray]  # (x [C, H, W], target) -> [H, W] in [0, 1]

DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_SCORE = "road"


def at_input(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [h, w] map resized (bilinear) to the input's [H, W] and scaled to [0, 1]."""
    return scale_map(np.clip(resize_map(cam, size), 0.0, None))


def gradient_explainer(method: str, feature_model) -> ExplainFn:
    """`method` from the bundle's explain graph (onnxruntime) or from autograd on a checkpoint."""
    from .extract import OnnxFeatureModel, TorchFeatureModel

    if isinstance(feature_model, OnnxFeatureModel) and feature_model.explain_path is not None:
        import onnxruntime as ort

        ex = feature_model.manifest.explain
        if method not in ex.cam_outputs:
            raise ValueError(f"{METHODS[method].title} is not in this bundle's explain graph (re-export it)")
        session = ort.InferenceSession(str(feature_model.explain_path), providers=["CPUExecutionProvider"])
        image = feature_model.manifest.input.name

        def from_graph(x: np.ndarray, target: int) -> np.ndarray:
            t = np.array([target] if ex.single_target else [[target]], dtype=np.int64)
            (cam,) = session.run([ex.cam_outputs[method]], {image: x[None].astype(np.float32), ex.targets_input: t})
            return at_input(cam.reshape(cam.shape[-2:]), x.shape[1:])

        return from_graph
    if isinstance(feature_model, TorchFeatureModel):
        import torch

        from training.explain.reference import TorchCAM

        model = feature_model.model

        def from_autograd(x: np.ndarray, target: int) -> np.ndarray:
            with TorchCAM(model) as ref:
                cams = ref(torch.from_numpy(x[None].astype(np.float32)), np.array([[target]]), [method])
            return at_input(cams[method][0, 0], x.shape[1:])

        return from_autograd
    raise ValueError(f"{METHODS[method].title} needs a checkpoint or a bundle with an explain graph")


def forward_explainer(method: str, logits_fn: LogitsFn, feature_model, patch: int | None, stride: int | None):
    """A gradient-free `method`, its forward passes run through `logits_fn`."""
    layer = feature_model.map_layers[-1] if feature_model is not None and feature_model.map_layers else None
    if METHODS[method].needs_map and layer is None:
        raise ValueError(f"{METHODS[method].title} needs a model that exposes its last feature map")

    def explain(x: np.ndarray, target: int) -> np.ndarray:
        t = np.array([target])
        if method == "occlusion":
            return run_passes(forward.occlusion(x, t, patch, stride), logits_fn)[0]
        if method == "rise":
            return run_passes(forward.rise(x, t), logits_fn)[0]
        maps = feature_model.feature_maps(x[None], layer)[0]
        if method == "eigencam":
            return at_input(forward.eigen_cam(maps, 1)[0], x.shape[1:])
        return at_input(run_passes(forward.score_cam(x, maps, t), logits_fn)[0], x.shape[1:])

    return explain


def make_methods(
    names: list[str],
    logits_fn: LogitsFn,
    feature_model=None,
    patch: int | None = None,
    stride: int | None = None,
) -> dict[str, ExplainFn]:
    """Per-image explainers `fn(x [C, H, W], target) -> [H, W]` for the requested method names.

    `feature_model` (an `extract.FeatureModel`) is needed by the gradient methods (its explain graph
    or torch model) and by Score-CAM / Eigen-CAM (its last stage's maps); occlusion and RISE need only
    `logits_fn`. A method the model cannot support raises ValueError naming why.
    """
    out: dict[str, ExplainFn] = {}
    for given in names:
        name = canonical(given)
        if name is None:
            raise ValueError(f"unknown explanation method {given!r}: choose from {', '.join(METHODS)}")
        if METHODS[name].kind == "gradient":
            out[name] = gradient_explainer(name, feature_model)
        else:
            out[name] = forward_explainer(name, logits_fn, feature_model, patch, stride)
    return out


def map_score(logits_fn: LogitsFn, x: np.ndarray, cam: np.ndarray, target: int, score: str, seed: int = 0) -> float:
    """Faithfulness `score` (striate.explain.scores) of map `cam` [H, W] for class `target` of `x`."""
    return float(run_passes(score_passes(score, x, scale_map(cam), target, seed=seed), logits_fn))


def _ranked_mask(importance: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] mask of the top `fraction` pixels (ties broken at random)."""
    flat = importance.ravel().astype(np.float64)
    k = round(fraction * flat.size)
    order = np.lexsort((rng.random(flat.size), -flat))  # by importance desc, random among ties
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(importance.shape)


def remove_pixels(
    x: np.ndarray, mask: np.ndarray, fill: str, rng: np.random.Generator, noise: float = 0.01
) -> np.ndarray:
    """`x` [C, H, W] with the `mask` [H, W] pixels removed.

    fill="road": noisy linear imputation from the neighbouring kept pixels (ROAD, Rong et al. 2022,
    striate.explain.scores.impute), so the shape of the removed region leaks less into the score;
    fill="mean": the image's per-channel mean.
    """
    if fill == "mean":
        return np.where(mask[None], x.mean(axis=(1, 2), keepdims=True), x).astype(np.float32)
    if fill != "road":
        raise ValueError(f"unknown fill {fill!r}: road or mean")
    if not mask.any():
        return x.astype(np.float32)
    return impute(x, (~mask).astype(np.float32), noise, rng)


def deletion_drops(
    logits_fn: LogitsFn,
    x: np.ndarray,
    target: int,
    importance: np.ndarray | None,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seed: int = 0,
    repeats: int = 1,
    fill: str = "road",
    least_first: bool = False,
) -> np.ndarray:
    """Drop in the probability of `target` when the top-k% pixels of `importance` are removed
    (the bottom-k% with `least_first`; random pixels averaged over `repeats` draws when
    `importance` is None), one value per fraction."""
    rng = np.random.default_rng(seed)
    base = softmax(logits_fn(x[None]))[0, target]
    batch, owners = [], []
    draws = repeats if importance is None else 1
    for fi, frac in enumerate(fractions):
        for _ in range(draws):
            imp = rng.random(x.shape[1:]) if importance is None else importance
            mask = _ranked_mask(-imp if least_first else imp, frac, rng)
            batch.append(remove_pixels(x, mask, fill, rng))
            owners.append(fi)
    probs = softmax(logits_fn(np.stack(batch).astype(np.float32)))[:, target]
    drops = np.zeros(len(fractions))
    for fi, p in zip(owners, probs, strict=True):
        drops[fi] += (base - p) / draws
    return drops


@dataclass
class GalleryItem:
    index: int  # position in the sample
    true: int
    pred: int
    confidence: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> [H, W]
    scores: dict[str, float] = field(default_factory=dict)  # method -> faithfulness of its map


def choose_images(probs: np.ndarray, y: np.ndarray, n_correct: int, n_wrong: int) -> list[int]:
    """`n_correct` correct images spread over classes, then the `n_wrong` most confident mistakes."""
    pred = probs.argmax(1)
    correct = [i for i in range(len(y)) if pred[i] == y[i]]
    picked: list[int] = []
    seen: set[int] = set()
    for i in correct:  # one per class first, then fill up
        if len(picked) < n_correct and int(y[i]) not in seen:
            picked.append(i)
            seen.add(int(y[i]))
    picked += [i for i in correct if i not in picked][: max(0, n_correct - len(picked))]
    wrong = sorted((i for i in range(len(y)) if pred[i] != y[i]), key=lambda i: -probs[i, pred[i]])
    return picked + wrong[:n_wrong]


@dataclass
class GalleryResult:
    items: list[GalleryItem]
    fractions: tuple[float, ...]
    drops: dict[str, np.ndarray]  # method (and "random") -> [n_images, n_fractions], most relevant first
    lerf: dict[str, np.ndarray]  # method -> [n_images, n_fractions], least relevant removed first
    fill: str = "road"
    score: str = DEFAULT_SCORE

    def summary(self) -> dict[str, dict[str, float]]:
        """Per method, averaged over images and fractions: `morf` (drop when the most important
        pixels go; higher = more faithful), `lerf` (drop when the least important go; lower is
        better), `faithfulness` = morf - lerf (ROAD's combined view, ~0 for a random map) and
        `excess_over_random` = morf - the random-pixel drop."""
        rand = float(self.drops["random"].mean())
        out = {}
        for method, d in self.drops.items():
            morf = float(d.mean())
            lerf = float(self.lerf[method].mean()) if method in self.lerf else morf
            scored = [it.scores[method] for it in self.items if method in it.scores]
            out[method] = {
                **({self.score: float(np.mean(scored))} if scored else {}),
                "morf": morf,
                "lerf": lerf,
                "faithfulness": morf - lerf,
                "excess_over_random": morf - rand,
                **{f"morf@{f:g}": float(v) for f, v in zip(self.fractions, d.mean(0), strict=True)},
            }
        return out


def build_gallery(
    logits_fn: LogitsFn,
    x: np.ndarray,
    y: np.ndarray,
    methods: dict[str, Callable],
    n_correct: int = 4,
    n_wrong: int = 4,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    random_repeats: int = 5,
    seed: int = 0,
    fill: str = "road",
    score: str = DEFAULT_SCORE,
) -> GalleryResult:
    """Explain the chosen images with every method (`name -> fn(x [C,H,W], target) -> [H, W]`) and
    score each map's faithfulness against random deletion, explaining the predicted class."""
    probs = softmax(logits_fn(x))
    chosen = choose_images(probs, y, n_correct, n_wrong)
    items, drops = [], {name: [] for name in [*methods, "random"]}
    lerf: dict[str, list] = {name: [] for name in methods}
    for i in chosen:
        pred = int(probs[i].argmax())
        item = GalleryItem(i, int(y[i]), pred, float(probs[i, pred]))
        for name, fn in methods.items():
            item.maps[name] = np.asarray(fn(x[i], pred), dtype=np.float32)
            item.scores[name] = map_score(logits_fn, x[i], item.maps[name], pred, score, seed)
            for least_first, store in ((False, drops), (True, lerf)):
                store[name].append(
                    deletion_drops(
                        logits_fn, x[i], pred, item.maps[name], fractions, seed, fill=fill, least_first=least_first
                    )
                )
        drops["random"].append(deletion_drops(logits_fn, x[i], pred, None, fractions, seed, random_repeats, fill=fill))
        items.append(item)

    def arrays(d: dict[str, list]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float64).reshape(len(items), len(fractions)) for k, v in d.items()}

    return GalleryResult(items, tuple(fractions), arrays(drops), arrays(lerf), fill, score)


def plot_gallery(result: GalleryResult, x: np.ndarray, labels: list[str], path: str | Path) -> Path:
    """Rows = images, columns = input + one overlay per method (2.2 in per cell); each overlay's
    title holds the method and its map's faithfulness score."""
    methods = list(result.items[0].maps) if result.items else []
    rows, cols = max(len(result.items), 1), 1 + len(methods)
    fig = new_figure(2.2 * cols, 2.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    score = SCORES[result.score]
    for r, item in enumerate(result.items):
        img, cmap = image_for_display(x[item.index])
        ok = "correct" if item.pred == item.true else "WRONG"
        axes[r, 0].imshow(img, cmap=cmap, interpolation="nearest")
        axes[r, 0].set_title(
            f"{ok}: true {labels[item.true]}\npred {labels[item.pred]} ({item.confidence:.2f})",
            fontsize=8,
            color="black" if ok == "correct" else "crimson",
        )
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(img, cmap=cmap, interpolation="nearest")
            heat = item.maps[method]
            axes[r, c].imshow(scale_map(np.maximum(heat, 0)), cmap="jet", alpha=0.5, interpolation="bilinear")
            value = item.scores.get(method)
            axes[r, c].set_title(
                f"{METHODS[method].title}\n{score.name} {value:+.3f}" if value is not None else method, fontsize=8
            )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    better = "higher" if score.higher_is_better else "lower"
    fig.suptitle(
        f"What the model looks at (explaining the predicted class); {score.title}: {better} is more faithful",
        fontsize=9,
    )
    return save_figure(fig, path)


def plot_faithfulness(result: GalleryResult, path: str | Path) -> Path:
    """Mean confidence drop vs fraction of pixels removed, per method and random (700 x 450 px)."""
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    pct = [100 * f for f in result.fractions]
    for i, (method, d) in enumerate(result.drops.items()):
        if method == "random":
            ax.plot(pct, d.mean(0), "--", color="black", label="random pixels")
            continue
        color = f"C{i}"
        ax.plot(pct, d.mean(0), "-o", color=color, markersize=4, label=f"{method}: most important first")
        ax.plot(pct, result.lerf[method].mean(0), ":", color=color, label=f"{method}: least important first")
    how = "imputed (ROAD)" if result.fill == "road" else "replaced by the image mean"
    ax.set_xlabel(f"% of pixels removed ({how})")
    ax.set_ylabel("drop in predicted-class probability")
    ax.set_title(
        f"Faithfulness on {len(result.items)} images: a faithful map drops the solid line\n"
        "high and keeps the dotted one low",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_results(result: GalleryResult, labels: list[str], out_dir: str | Path) -> tuple[Path, Path]:
    """faithfulness.csv (per image, method and fraction) and faithfulness.json (summary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "faithfulness.csv", out_dir / "faithfulness.json"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_index", "true", "pred", "confidence", "method", "order", "fraction", "drop"])
        for n, item in enumerate(result.items):
            for order, table in (("most_first", result.drops), ("least_first", result.lerf)):
                for method, d in table.items():
                    for f, v in zip(result.fractions, d[n], strict=True):
                        writer.writerow(
                            [
                                item.index,
                                labels[item.true],
                                labels[item.pred],
                                f"{item.confidence:.6f}",
                                method,
                                order,
                                f,
                                f"{v:.6f}",
                            ]
                        )
    json_path.write_text(
        json.dumps(
            {
                "images": len(result.items),
                "fractions": list(result.fractions),
                "fill": result.fill,
                "methods": result.summary(),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return csv_path, json_path
