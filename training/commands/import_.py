"""`striate import MODEL.onnx --name NAME --labels labels.txt ...`: serve and explain a foreign ONNX classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS = ("imagenet",)
AUTO = "auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX image classifier (one 4-D float input, NCHW or NHWC)")
    parser.add_argument("--name", help="model name in the repository (lower-case, e.g. resnet18)")
    parser.add_argument("--labels", help="text file with one class label per line, in logit order")
    parser.add_argument("--version", type=int, default=None, help="version to write (default: highest + 1)")
    parser.add_argument("--out", default="exported", help="model repository root (default: exported)")
    group = parser.add_argument_group("preprocessing (what the service does to an image before the graph)")
    group.add_argument("--preset", choices=PRESETS, help="imagenet: RGB, ImageNet mean/std, resize 256/224 of --size")
    group.add_argument("--size", help="input size H or HxW (default: the graph's fixed input size)")
    group.add_argument("--resize", help="resize before the centre crop: N (shorter side) or HxW (exact)")
    group.add_argument("--mean", type=float, nargs="+", help="per-channel mean of inputs scaled to [0, 1]")
    group.add_argument("--std", type=float, nargs="+", help="per-channel std (--mean 0 --std 1: inputs in [0, 1])")
    group.add_argument("--color-mode", choices=["RGB", "L"], help="default: RGB for 3 channels, L for 1")
    group.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"], help="default: bilinear")
    parser.add_argument(
        "--target-tensor",
        help="the [N, C, h, w] tensor to explain with gradient methods ('auto': the last spatial map before "
        "pooling); without it, gradient-free methods only",
    )
    parser.add_argument(
        "--feature-tensor", action="append", default=[], help="also serve this tensor as a feature layer (repeatable)"
    )
    parser.add_argument("--logits-output", help="the graph output holding the class scores (default: its only output)")
    parser.add_argument("--architecture", help="architecture name for the manifest (default: the file name)")
    parser.add_argument(
        "--require-gradients",
        action="store_true",
        help="refuse (naming the op) instead of falling back to gradient-free",
    )
    parser.add_argument("--list-tensors", action="store_true", help="list the candidate target tensors and exit")


def _pair(text: str, flag: str) -> tuple[int, int]:
    from striate.errors import StriateError

    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise StriateError(f"{flag} must be N or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise StriateError(f"{flag} must be N or HxW with positive sizes, got {text!r}")
    return (values[0], values[-1])


def preprocessing_from(args: argparse.Namespace, graph_size: tuple, graph_channels) -> object:
    """The manifest's Preprocessing from the flags, the preset and the graph's fixed sizes."""
    from pydantic import ValidationError

    from striate.errors import StriateError
    from striate.manifest import Preprocessing
    from striate.normalization import IMAGENET_MEAN, IMAGENET_STD
    from striate.preprocess import IMAGENET_RESIZE_RATIO

    if args.size:
        size = _pair(args.size, "--size")
    elif all(isinstance(d, int) for d in graph_size):
        size = tuple(graph_size)
    else:
        raise StriateError("the graph's input size is dynamic: give --size H or HxW")
    color = args.color_mode or ("L" if graph_channels == 1 else "RGB")
    mean, std = args.mean, args.std
    resize_mode, resize = "exact", size
    if args.preset == "imagenet":
        mean, std = mean or list(IMAGENET_MEAN), std or list(IMAGENET_STD)
        side = round(min(size) * IMAGENET_RESIZE_RATIO)
        resize_mode, resize = "shorter", (side, side)
    if mean is None or std is None:
        raise StriateError("say how inputs are normalised: --preset imagenet, or --mean and --std (0 and 1: [0, 1])")
    channels = 1 if color == "L" else 3
    mean, std = (list(v) * channels if len(v) == 1 else list(v) for v in (mean, std))
    if args.resize:
        resize = _pair(args.resize, "--resize")
        resize_mode = "exact" if "x" in args.resize.lower() else "shorter"
    try:
        return Preprocessing(
            color_mode=color,
            resize_mode=resize_mode,
            resize_size=resize,
            crop_size=size,
            interpolation=args.interpolation or "bilinear",
            mean=tuple(mean),
            std=tuple(std),
        )
    except ValidationError as exc:
        raise StriateError(f"bad preprocessing: {exc.errors()[0]['msg']}") from None


def read_labels(path: str) -> list[str]:
    from striate.errors import StriateError

    file = Path(path)
    if not file.is_file():
        raise StriateError(f"no labels file {path}")
    labels = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels or any(not label for label in labels):
        raise StriateError(f"{path}: one non-empty label per line, in logit order")
    return labels


def run(args: argparse.Namespace) -> int:
    from striate.errors import StriateError
    from striate.manifest import Manifest
    from training.importer import import_onnx
    from training.importer.api import list_tensors
    from training.importer.source import graph_geometry, load

    model = load(args.model)
    graph_size, graph_channels = graph_geometry(model)
    if args.list_tensors:
        if args.mean is None and args.std is None and args.preset is None:
            args.mean, args.std = [0.0], [1.0]  # normalisation does not change shapes
        maps, suggested = list_tensors(model, preprocessing_from(args, graph_size, graph_channels), args.logits_output)
        print(f"[N, C, h, w] tensors the logits depend on ({len(maps)}), last ones nearest the head:")
        for name, shape in maps.items():
            mark = "   <- suggested --target-tensor" if name == suggested else ""
            print(f"  {name}  {list(shape)}{mark}")
        return 0
    if not args.name or not args.labels:
        raise StriateError("--name and --labels are required (or use --list-tensors)")
    preprocessing = preprocessing_from(args, graph_size, graph_channels)
    target = args.target_tensor
    if target == AUTO:
        _, target = list_tensors(model, preprocessing, args.logits_output)
    path = import_onnx(
        args.model,
        read_labels(args.labels),
        preprocessing,
        args.name,
        version=args.version,
        out_root=args.out,
        target_tensor=target,
        feature_tensors=args.feature_tensor,
        logits_output=args.logits_output,
        architecture=args.architecture or Path(args.model).stem,
        origin=f"onnx:{Path(args.model).as_posix()}",
        require_gradients=args.require_gradients,
    )
    manifest = Manifest.load(path)
    parity = manifest.provenance.parity
    print(f"wrote {path}/ ({manifest.architecture}, {len(manifest.labels)} classes)")
    if parity is not None:
        cam = "" if parity.max_abs_diff_cam is None else f", Grad-CAM vs pytorch-grad-cam {parity.max_abs_diff_cam:.2g}"
        print(
            f"self-check on {parity.images} real images: logits {parity.max_abs_diff_logits:.2g}, "
            f"embedding {parity.max_abs_diff_embedding:.2g}{cam} (tolerance {parity.tolerance:g})"
        )
    ex = manifest.explain
    if ex is not None and ex.gradient_methods:
        print(f"explain: {', '.join(ex.gradient_methods)} on {ex.target_layer!r}, plus gradient-free methods")
    else:
        print(f"explain: gradient-free methods only ({ex.no_gradients if ex is not None else 'no map'})")
    return 0
