"""`striate analyze separability|specialization|activations|gallery MODEL --data ... --out DIR`.

MODEL is a `.pt` checkpoint (torch) or a bundle folder with manifest.json (onnxruntime); `gallery`
also takes a bare `.onnx` classifier (occlusion and RISE only: no layers, no explain graph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from striate.errors import StriateError
from striate.explain.methods import METHODS, canonical
from striate.explain.scores import SCORES
from striate.manifest import Preprocessing

ANALYSES = ("separability", "specialization", "activations", "gallery")
METHOD_NAMES = tuple(METHODS)
DEFAULT_OUT = "artifacts/analysis"  # each analysis writes into <out>/ (created)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT_OR_BUNDLE", help="a .pt checkpoint or a bundle folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        choices=("digits", "shapes"),
        default=None,
        help="dataset (default: the one the model was trained on, when recorded)",
    )
    src.add_argument("--data-dir", default=None, help="an ImageFolder directory (root/<class>/<image>)")
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default="test",
        help="which split of the data to sample (default: test, the held-out images)",
    )
    p.add_argument("--samples", type=int, default=500, help="images to sample, stratified (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    p = sub.add_parser("separability", help="t-SNE per layer + silhouette, k-NN and linear-probe accuracy")
    _common(p)
    p.add_argument("--layers", default=None, help="comma-separated layers (default: every stage and embedding)")
    p.add_argument("--no-input", action="store_true", help="leave out the raw-pixel baseline panel")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--k", type=int, default=5, help="neighbours for the k-NN accuracy (default: 5)")

    p = sub.add_parser("specialization", help="per-neuron AUC/Fisher for a class + MDS map of the neurons")
    _common(p)
    p.add_argument("--layer", default="embedding", help="layer to study (default: embedding, the dense layer)")
    p.add_argument("--class", dest="target", default=None, help="class label to colour by (default: the first)")

    p = sub.add_parser("activations", help="feature maps of one layer for one image, as a grid")
    _common(p)
    p.add_argument("--layer", default=None, help="stage whose maps to draw (default: the first stage)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", type=int, default=0, help="image number within the sample (default: 0)")
    src.add_argument("--image", default=None, help="an image file instead of a dataset image")
    p.add_argument("--max-channels", type=int, default=64, help="most active channels drawn (default: 64)")
    p.add_argument("--shared-scale", action="store_true", help="one colour scale for all channels")

    p = sub.add_parser("gallery", help="explanation methods side by side, each map with its faithfulness score")
    _common(p)
    p.set_defaults(samples=200)
    p.add_argument(
        "--methods",
        default="gradcam,gradcampp,scorecam,occlusion",
        help=f"comma-separated, of: {', '.join(METHOD_NAMES)} (unsupported ones are skipped)",
    )
    p.add_argument(
        "--score",
        choices=tuple(SCORES),
        default="road",
        help="faithfulness score in each map's title (default: %(default)s)",
    )
    p.add_argument("--correct", type=int, default=4, help="correctly classified images (default: 4)")
    p.add_argument("--wrong", type=int, default=4, help="misclassified images, most confident first (default: 4)")
    p.add_argument("--patch", type=int, default=None, help="occlusion patch side in pixels (default: input/8)")
    p.add_argument("--stride", type=int, default=None, help="occlusion stride (default: patch/2)")
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.3,0.5", help="pixel fractions removed for faithfulness")
    p.add_argument(
        "--fill",
        choices=("road", "mean"),
        default="road",
        help="how removed pixels are filled: ROAD noisy linear imputation or the image mean",
    )


def _infer_data(fm, args) -> tuple[str | None, str | None]:
    """(data name, data dir) from the arguments, else from what the model was trained on."""
    if args.data or args.data_dir:
        return args.data, args.data_dir
    cfg = getattr(fm, "run_config", {}) or {}
    if cfg.get("data") == "folder" and cfg.get("data_dir"):
        return None, cfg["data_dir"]
    if cfg.get("data") in ("digits", "shapes"):
        return cfg["data"], None
    data = getattr(fm, "data", "") or ""
    if data.startswith("folder:"):
        return None, data.split(":", 1)[1]
    for name in ("digits", "shapes"):
        if data.startswith(name):
            return name, None
    raise StriateError("cannot tell which data the model was trained on: pass --data or --data-dir")


def _sample(fm, args, labels: list[str], spec: Preprocessing):
    from training.analysis.samples import load_sample

    if args.samples < 2:
        raise StriateError("--samples must be at least 2")
    data, data_dir = _infer_data(fm, args)
    return load_sample(
        labels,
        spec,
        data=data,
        data_dir=data_dir,
        n=args.samples,
        seed=args.seed,
        split=args.split,
        run_config=getattr(fm, "run_config", None),
    )


def _print_table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(f"{c!s:<{w}}" for c, w in zip(r, widths, strict=True)))


def _separability(fm, args, out: Path) -> None:
    from training.analysis.extract import INPUT
    from training.analysis.separability import merge_identical, run_separability

    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    fm.check_layers(layers or [])
    sample = _sample(fm, args, fm.labels, fm.preprocessing)
    feats = merge_identical(fm.features(sample.x, layers))
    if not args.no_input:
        feats = {INPUT: sample.x.reshape(len(sample.x), -1), **feats}
    title = f"{fm.display_name}: {len(sample.y)} {args.split} images, t-SNE per layer"
    scores = run_separability(
        feats, sample.y, fm.labels, out, perplexity=args.perplexity, k=args.k, seed=args.seed, title=title
    )
    _print_table(
        [[s.layer, s.dim, f"{s.silhouette:.3f}", f"{s.knn_accuracy:.3f}", f"{s.linear_accuracy:.3f}"] for s in scores],
        ["layer", "dim", "silhouette", f"{args.k}-NN acc", "linear acc"],
    )
    print(f"wrote {out / 'separability.png'}, separability.csv, separability.json")


def _class_index(labels: list[str], target: str | None) -> int:
    if target is None:
        return 0
    if target in labels:
        return labels.index(target)
    raise StriateError(f"unknown class {target!r}; the model's classes are {', '.join(labels[:20])}")


def _specialization(fm, args, out: Path) -> None:
    from training.analysis.specialization import run_specialization

    fm.check_layers([args.layer])
    target = _class_index(fm.labels, args.target)
    sample = _sample(fm, args, fm.labels, fm.preprocessing)
    feats = fm.features(sample.x, [args.layer])[args.layer]
    spec = run_specialization(feats, sample.y, fm.labels, target, out, layer=args.layer, seed=args.seed)
    auc = spec.auc[:, target]
    top = np.argsort(-np.nan_to_num(auc, nan=0))[:5]
    print(
        f"{args.layer}: {len(auc)} neurons, {int(spec.dead.sum())} dead; class {fm.labels[target]}: "
        f"{int((auc >= 0.9).sum())} neurons with AUC >= 0.9; best: " + ", ".join(f"#{j} ({auc[j]:.3f})" for j in top)
    )
    print(f"wrote {out / 'specialization.png'}, specialization.csv")


def _activations(fm, args, out: Path) -> None:
    from striate.preprocess import ImageDecodeError, decode_image, preprocess
    from training.analysis.activations import plot_activation_grid

    layer = args.layer or (fm.map_layers[0] if fm.map_layers else None)
    if layer is None:
        raise StriateError(f"{fm.source} exports no feature maps")
    fm.check_layers([layer], maps=True)
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise StriateError(f"image not found: {path}")
        try:
            x = preprocess(decode_image(path.read_bytes()), fm.preprocessing)[None]
        except ImageDecodeError as exc:
            raise StriateError(f"{path}: {exc}") from None
        what = path.name
    else:
        sample = _sample(fm, args, fm.labels, fm.preprocessing)
        if not 0 <= args.index < len(sample.y):
            raise StriateError(f"--index must lie in [0, {len(sample.y) - 1}]")
        x = sample.x[args.index : args.index + 1]
        what = f"{args.split} image #{int(sample.index[args.index])} (class {fm.labels[sample.y[args.index]]})"
    maps = fm.feature_maps(x, layer)[0]
    pred = int(fm.logits(x)[0].argmax())
    c, h, w = maps.shape
    title = f"{layer}: {c} maps of {h}x{w} for {what}; predicted {fm.labels[pred]}"
    path = plot_activation_grid(
        x[0],
        maps,
        out / f"activations_{layer}.png",
        layer=layer,
        title=title,
        max_channels=args.max_channels,
        shared_scale=args.shared_scale,
    )
    print(f"wrote {path}")


def _gallery(fm, args, out: Path) -> None:
    from training.analysis import gallery
    from training.analysis.extract import onnx_classifier

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise StriateError(f"--fractions must be comma-separated numbers, not {args.fractions!r}") from None
    if not all(0 < f < 1 for f in fractions):
        raise StriateError("--fractions must lie strictly between 0 and 1")
    if fm is None:  # a bare ONNX classifier: inputs in [0, 1] at the graph's own size
        logits_fn, shape = onnx_classifier(args.model)
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise StriateError(f"{args.model}: expected an image input [N, C, H, W] with fixed C, H, W")
        c, h, w = shape[1:]
        spec = Preprocessing(
            color_mode="L" if c == 1 else "RGB", resize_size=(h, w), crop_size=(h, w), mean=(0.0,) * c, std=(1.0,) * c
        )
        n_out = logits_fn(np.zeros((1, c, h, w), np.float32)).shape[1]
        labels = [str(i) for i in range(n_out)]
    else:
        logits_fn, spec, labels = fm.logits, fm.preprocessing, fm.labels
    sample = _sample(fm, args, labels, spec)
    size = min(spec.crop_size)
    patch = args.patch or max(1, size // 8)
    stride = args.stride or max(1, patch // 2)
    methods: dict = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if canonical(name) is None:
            raise StriateError(f"unknown explanation method {name!r}: choose from {', '.join(METHOD_NAMES)}")
        try:
            methods.update(gallery.make_methods([name], logits_fn, fm, patch=patch, stride=stride))
        except ValueError as exc:
            print(f"skipping {name}: {exc}")
    if not methods:
        raise StriateError("no explanation method applies to this model")
    result = gallery.build_gallery(
        logits_fn,
        sample.x,
        sample.y,
        methods,
        n_correct=args.correct,
        n_wrong=args.wrong,
        fractions=fractions,
        seed=args.seed,
        fill=args.fill,
        score=args.score,
    )
    if not result.items:
        raise StriateError("no images to explain (try --samples, --correct, --wrong)")
    gallery.plot_gallery(result, sample.x, labels, out / "gallery.png")
    gallery.plot_faithfulness(result, out / "faithfulness.png")
    gallery.write_results(result, labels, out)
    summary = result.summary()
    n_wrong = sum(item.pred != item.true for item in result.items)
    print(
        f"{len(result.items)} images ({n_wrong} misclassified); mean drop in predicted-class probability "
        f"when {', '.join(f'{100 * f:g}' for f in fractions)}% of the pixels are removed ({args.fill}):"
    )
    _print_table(
        [
            [
                m,
                f"{s[args.score]:+.3f}" if args.score in s else "-",
                f"{s['morf']:.3f}",
                f"{s['lerf']:.3f}",
                f"{s['faithfulness']:+.3f}",
                f"{s['excess_over_random']:+.3f}",
            ]
            for m, s in summary.items()
        ],
        ["method", args.score, "most-first", "least-first", "faithfulness", "most-first vs random"],
    )
    print(f"wrote {out / 'gallery.png'}, faithfulness.png, faithfulness.csv, faithfulness.json")
    (out / "gallery_settings.json").write_text(
        json.dumps({"patch": patch, "stride": stride, "methods": list(methods), "fractions": list(fractions)}, indent=2)
        + "\n"
    )


def run(args: argparse.Namespace) -> int:
    from training.analysis.extract import open_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.model)
    bare_onnx = args.analysis == "gallery" and path.suffix == ".onnx" and path.is_file()
    fm = None if bare_onnx else open_model(path)
    try:
        {
            "separability": _separability,
            "specialization": _specialization,
            "activations": _activations,
            "gallery": _gallery,
        }[args.analysis](fm, args, out)
    finally:
        if fm is not None:
            fm.close()
    return 0
