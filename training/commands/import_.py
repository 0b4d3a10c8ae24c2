"""`striate import MODEL.onnx --labels labels.txt [--name NAME] ...`: serve and explain a foreign ONNX classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS = ("imagenet",)
AUTO = "auto"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX image classifier (one 4-D float input, NCHW or NHWC)")
    parser.add_argument("--name", help="model name in the repository (default: from the file name, e.g. resnet18)")
    parser.add_argument("--labels", help="class labels in logit order: a text file (one per line) or a JSON list")
    parser.add_argument("--version", type=int, default=None, help="version to write (default: highest + 1)")
    parser.add_argument("--out", default="exported", help="model repository root (default: exported)")
    group = parser.add_argument_group("preprocessing (what the service does to an image before the graph)")
    group.add_argument(
        "--preprocessing",
        help="a JSON object of preprocessing fields (as in a bundle's manifest), inline or a file; a bundle's "
        "manifest.json takes its preprocessing; the flags below override single fields",
    )
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


def _sizes(text: str, flag: str) -> list[int]:
    """`N` or `HxW` as [N] or [H, W]."""
    from striate.errors import StriateError

    try:
        values = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise StriateError(f"{flag} must be N or HxW, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise StriateError(f"{flag} must be N or HxW with positive sizes, got {text!r}")
    return values


def read_preprocessing(text: str) -> object:
    """--preprocessing: a JSON object (inline or a file) of Preprocessing fields, or a whole manifest."""
    import json

    from pydantic import ValidationError

    from striate.errors import StriateError
    from striate.manifest import Preprocessing

    inline = text.lstrip().startswith("{")  # else a file name (a long JSON is no valid path)
    where = "--preprocessing" if inline else text
    try:
        data = json.loads(text if inline else Path(text).read_text(encoding="utf-8"))
    except OSError as exc:
        why = f"neither a JSON object nor a readable file ({exc.strerror})"
        raise StriateError(f"--preprocessing {text!r} is {why}") from None
    except json.JSONDecodeError as exc:
        raise StriateError(f"{where} is neither a JSON object nor a file holding one: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("preprocessing"), dict):
        data = data["preprocessing"]  # a bundle's manifest.json
    if not isinstance(data, dict):
        raise StriateError("--preprocessing must be a JSON object of preprocessing fields")
    try:
        return Preprocessing.model_validate(data)
    except ValidationError as exc:
        why = exc.errors()[0]
        raise StriateError(f"bad --preprocessing: {'.'.join(map(str, why['loc']))} {why['msg']}") from None


def preprocessing_from(args: argparse.Namespace, graph_size: tuple, graph_channels) -> object:
    """The manifest's Preprocessing: --preprocessing or --preset as the base, each flag overriding
    one field; without a base the size defaults to the graph's fixed size and the normalisation
    must be given (a foreign graph's is unknown)."""
    from striate.errors import StriateError
    from striate.preprocess import imagenet_preprocessing
    from training.byom.sources import with_overrides

    base = read_preprocessing(args.preprocessing) if args.preprocessing else None
    size = _sizes(args.size, "--size") if args.size else None
    if size is None and base is None:
        if not all(isinstance(d, int) for d in graph_size):
            raise StriateError("the graph's input size is dynamic: give --size H or HxW")
        size = list(graph_size)
    if args.preset == "imagenet":
        crop = size or list(base.crop_size)
        preset = imagenet_preprocessing(min(crop))
        base = preset.model_copy(update={"interpolation": base.interpolation}) if base is not None else preset
        size = crop
    elif base is None and (args.mean is None or args.std is None):
        raise StriateError(
            "say how inputs are normalised: --preset imagenet, --preprocessing, or --mean and --std (0 and 1: [0, 1])"
        )
    color = args.color_mode or (None if base is not None else ("L" if graph_channels == 1 else "RGB"))
    preprocessing = with_overrides(
        base,
        size=size,
        resize=_sizes(args.resize, "--resize") if args.resize else None,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
        color_mode=color,
    )
    channels = 1 if preprocessing.color_mode == "L" else 3
    if isinstance(graph_channels, int) and graph_channels != channels:
        raise StriateError(
            f"the graph takes {graph_channels}-channel images, but color mode {preprocessing.color_mode} "
            f"gives {channels}: use --color-mode {'L' if graph_channels == 1 else 'RGB'}"
        )
    return preprocessing


def default_name(model_path: str) -> str:
    """A model name from the file name: `ResNet-50_v2.onnx` -> `resnet-50_v2`."""
    import re

    name = re.sub(r"[^a-z0-9_.-]+", "-", Path(model_path).stem.lower()).strip("-._")
    return name or "model"


def run(args: argparse.Namespace) -> int:
    from striate.errors import StriateError
    from striate.manifest import Manifest
    from training.byom.sources import read_labels
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
    if not args.labels:
        raise StriateError("--labels is required (or use --list-tensors)")
    labels = read_labels(args.labels)
    name = args.name or default_name(args.model)
    preprocessing = preprocessing_from(args, graph_size, graph_channels)
    target = args.target_tensor
    if target == AUTO:
        _, target = list_tensors(model, preprocessing, args.logits_output)
    path = import_onnx(
        args.model,
        labels,
        preprocessing,
        name,
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
