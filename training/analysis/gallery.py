"""Explanation gallery: Grad-CAM next to gradient-free maps, and how faithful each one is.

- Grad-CAM: the bundle's `explain.onnx` (onnxruntime) or pytorch-grad-cam on a checkpoint.
- Occlusion sensitivity (gradient-free, any ONNX classifier): slide a patch filled with the image
  mean over the input; a pixel's importance is the mean drop of the class score over the patches
  that cover it.
- Score-CAM (gradient-free; needs the target layer's feature maps, which bundles export): each
  channel, upsampled and scaled to [0, 1], masks the input; its weight is the class probability
  of the masked input (softmax over channels, as in the paper's implementation).
- Faithfulness (ROAD, Rong et al. 2022): remove the top-k% most important pixels (noisy linear
  imputation from their neighbours, or the image mean) and measure the drop in the predicted
  class's probability ("MoRF"); removing the least important first ("LeRF") and random pixels are
  the references. A faithful map drops the confidence more than random does under MoRF and less
  under LeRF; `faithfulness = MoRF - LeRF` sums that up in one number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .extract import softmax
from .plots import image_for_display, new_figure, save_figure

LogitsFn = Callable[[np.ndarray], np.ndarray]  # [N, C, H, W] float32 -> [N, K] logits
ExplainFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x [N,C,H,W], target [N]) -> [N, H, W]

DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [H, W] bilinear (Pillow, float), as overlays and deletion need input resolution."""
    h, w = size
    if cam.shape == (h, w):
        return cam.astype(np.float32)
    img = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a, dtype=np.float32)


def _fill_value(x: np.ndarray) -> np.ndarray:
    """Per-channel mean of one [C, H, W] image, broadcastable to it."""
    return x.mean(axis=(1, 2), keepdims=True)


def _windows(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:  # cover the last rows/columns too
        starts.append(size - patch)
    return starts


def occlusion_sensitivity(
    logits_fn: LogitsFn,
    x: np.ndarray,
    target: int,
    patch: int = 4,
    stride: int = 2,
    score: str = "logit",
    batch: int = 256,
) -> np.ndarray:
    """[H, W] importance of each pixel of `x` [C, H, W] for class `target`.

    Gradient-free: only forward passes, so it explains any ONNX classifier. A pixel's value is the
    mean, over the patches covering it, of score(original) - score(patch filled with the mean);
    positive = the pixel supports the class. `score` is "logit" (does not saturate) or "prob".
    """
    h, w = x.shape[1:]
    patch_h, patch_w = min(patch, h), min(patch, w)
    fill = _fill_value(x)
    boxes = [(t, left) for t in _windows(h, patch_h, stride) for left in _windows(w, patch_w, stride)]

    def class_score(batch_x: np.ndarray) -> np.ndarray:
        logits = logits_fn(batch_x)
        return (softmax(logits) if score == "prob" else logits)[:, target]

    base = float(class_score(x[None])[0])
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        occluded = np.repeat(x[None], len(chunk), axis=0)
        for j, (t, left) in enumerate(chunk):
            occluded[j, :, t : t + patch_h, left : left + patch_w] = fill
        drops = base - class_score(occluded)
        for (t, left), d in zip(chunk, drops, strict=True):
            total[t : t + patch_h, left : left + patch_w] += d
            count[t : t + patch_h, left : left + patch_w] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def score_cam(
    logits_fn: LogitsFn, maps_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, target: int, batch: int = 256
) -> np.ndarray:
    """[H, W] Score-CAM map in [0, 1] of `x` [C, H, W] for `target`, from the layer's maps [1, K, h, w]."""
    acts = maps_fn(x[None])[0]  # [K, h, w]
    h, w = x.shape[1:]
    masks = np.stack([_minmax(upsample(a, (h, w))) for a in acts])  # [K, H, W]
    fill = _fill_value(x)
    scores = []
    for i in range(0, len(masks), batch):
        m = masks[i : i + batch, None]
        scores.append(softmax(logits_fn((x[None] * m + fill * (1 - m)).astype(np.float32)))[:, target])
    weights = softmax(np.concatenate(scores)[None])[0]  # normalised channel weights
    cam = np.maximum((weights[:, None, None] * acts).sum(axis=0), 0.0)
    return _minmax(upsample(cam, (h, w)))


def onnx_gradcam(
    explain_path: str | Path, input_name: str = "image", target_name: str = "target", cam_name: str = "cam"
) -> ExplainFn:
    """Grad-CAM from a bundle's explain graph (onnxruntime), upsampled to the input size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(explain_path), providers=["CPUExecutionProvider"])

    def explain(x: np.ndarray, target: np.ndarray) -> np.ndarray:
        cams = session.run(
            [cam_name],
            {input_name: np.ascontiguousarray(x, dtype=np.float32), target_name: np.asarray(target, dtype=np.int64)},
        )[0]
        return np.stack([upsample(c, x.shape[2:]) for c in cams])

    return explain


def torch_gradcam(model) -> ExplainFn:
    """Grad-CAM by autograd (pytorch-grad-cam) on the last stage of a `StriateModel`."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = model.stages[model.stage_names[-1]]

    def explain(x: np.ndarray, target: np.ndarray) -> np.ndarray:
        cam = GradCAM(model=model, target_layers=[layer])
        try:
            out = cam(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                targets=[ClassifierOutputTarget(int(t)) for t in target],
            )
        finally:
            cam.activations_and_grads.release()
        return np.asarray(out, dtype=np.float32)

    return explain


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
    via pytorch-grad-cam's imputer), so the shape of the removed region leaks less into the score;
    fill="mean": the image's per-channel mean.
    """
    if fill == "mean":
        return np.where(mask[None], _fill_value(x), x).astype(np.float32)
    if fill != "road":
        raise ValueError(f"unknown fill {fill!r}: road or mean")
    if not mask.any():
        return x.astype(np.float32)
    import torch
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    keep = torch.from_numpy((~mask).astype(np.float32))
    out = NoisyLinearImputer(noise=0.0)(torch.from_numpy(x.astype(np.float32)), keep).numpy()
    out[:, mask] += noise * rng.standard_normal((x.shape[0], int(mask.sum()))).astype(np.float32)
    return out.astype(np.float32)


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
            out[method] = {
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

    return GalleryResult(items, tuple(fractions), arrays(drops), arrays(lerf), fill)


def plot_gallery(result: GalleryResult, x: np.ndarray, labels: list[str], path: str | Path) -> Path:
    """Rows = images, columns = input + one overlay per method (2.2 in per cell)."""
    methods = list(result.items[0].maps) if result.items else []
    rows, cols = max(len(result.items), 1), 1 + len(methods)
    fig = new_figure(2.2 * cols, 2.2 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
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
            axes[r, c].imshow(_minmax(np.maximum(heat, 0)), cmap="jet", alpha=0.5, interpolation="bilinear")
            if r == 0:
                axes[r, c].set_title(method, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("What the model looks at (explaining the predicted class)", fontsize=10)
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


METHODS = ("gradcam", "occlusion", "scorecam")


def make_methods(
    names: list[str],
    logits_fn: LogitsFn,
    feature_model=None,
    patch: int = 4,
    stride: int = 2,
    scorecam_layer: str | None = None,
) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """Per-image explainers `fn(x [C, H, W], target) -> [H, W]` for the requested method names.

    `feature_model` (an `extract.FeatureModel`) is needed by Grad-CAM (its explain graph or torch
    model) and Score-CAM (its last stage's maps); occlusion needs only `logits_fn`. A method the
    model cannot support raises ValueError naming why.
    """
    from .extract import OnnxFeatureModel, TorchFeatureModel

    out: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {}
    for name in names:
        if name == "occlusion":
            out[name] = lambda x, t: occlusion_sensitivity(logits_fn, x, t, patch=patch, stride=stride)
        elif name == "gradcam":
            if isinstance(feature_model, OnnxFeatureModel) and feature_model.explain_path is not None:
                spec = feature_model.manifest.explain
                batched = onnx_gradcam(
                    feature_model.explain_path, feature_model.manifest.input.name, spec.target_input, spec.cam_output
                )
            elif isinstance(feature_model, TorchFeatureModel):
                batched = torch_gradcam(feature_model.model)
            else:
                raise ValueError("Grad-CAM needs a checkpoint or a bundle with an explain graph")
            out[name] = lambda x, t, f=batched: f(x[None], np.asarray([t]))[0]
        elif name == "scorecam":
            layer = scorecam_layer or (
                feature_model.map_layers[-1] if feature_model and feature_model.map_layers else None
            )
            if layer is None:
                raise ValueError("Score-CAM needs a model that exposes its last feature map")
            out[name] = lambda x, t, m=feature_model, lay=layer: score_cam(
                logits_fn, lambda b: m.feature_maps(b, lay), x, t
            )
        else:
            raise ValueError(f"unknown explanation method {name!r}: choose from {', '.join(METHODS)}")
    return out
