"""`striate export SOURCE --name NAME`: write a checked ONNX bundle version to exported/.

SOURCE is a Striate checkpoint (.pt) or a model spec: `torchvision:NAME`, `timm:NAME` or
`package.module:factory` (any PyTorch classifier, with weights from a local file).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a Striate checkpoint (.pt) from `striate train`/`finetune`, or a model spec: torchvision:NAME, "
        "timm:NAME or package.module:factory",
    )
    parser.add_argument("--name", required=True, help="model name in the repository (lower-case, e.g. digits)")
    parser.add_argument("--version", type=int, default=None, help="version to write (default: highest + 1)")
    parser.add_argument("--out", default="exported", help="model repository root (default: exported)")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="write an INT8 model.onnx (static QDQ, calibrated on training images) as its own version",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="model.onnx in float16 inside, float32 inputs/outputs (for GPUs)"
    )
    parser.add_argument(
        "--calib-images", type=int, default=None, help="training images to calibrate INT8 on (default: 256)"
    )
    spec = parser.add_argument_group("model specs (torchvision:NAME, timm:NAME, package.module:factory)")
    spec.add_argument(
        "--weights",
        help="local state dict (.pth/.pt read weights-only, or .safetensors), or a torchvision weights enum "
        "whose file is in the torch hub cache (as --pretrained)",
    )
    spec.add_argument(
        "--pretrained",
        help="torchvision weights enum for labels and preprocessing, e.g. ResNet18_Weights.IMAGENET1K_V1 "
        "(tensors from --weights, else from torchvision's file in the torch hub cache; never downloaded)",
    )
    spec.add_argument("--random-init", action="store_true", help="export the builder's random weights (tests, demos)")
    spec.add_argument(
        "--kwargs", default=None, help="builder/factory keywords as a JSON object, e.g. '{\"num_classes\": 10}'"
    )
    spec.add_argument("--labels", help="class names: a text file (one per line) or a JSON list")
    spec.add_argument("--size", type=int, nargs="+", metavar="N", help="input (crop) size: H [W]")
    spec.add_argument(
        "--resize", type=int, nargs="+", metavar="N", help="resize before the crop: S (shorter side) or H W"
    )
    spec.add_argument("--mean", type=float, nargs="+", help="per-channel mean (default: the weights', else ImageNet's)")
    spec.add_argument("--std", type=float, nargs="+", help="per-channel std (default: the weights', else ImageNet's)")
    spec.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"])
    spec.add_argument("--color-mode", choices=["RGB", "L"], help="RGB (default) or L (grayscale)")
    spec.add_argument("--target-layer", help="module path to explain (default: the last conv stage)")
    spec.add_argument("--stage", action="append", default=[], help="module path whose map to export (repeatable)")
    spec.add_argument(
        "--require-gradients", action="store_true", help="refuse instead of exporting without gradient methods"
    )


SPEC_ONLY = (
    "weights",
    "pretrained",
    "random_init",
    "kwargs",
    "labels",
    "size",
    "resize",
    "mean",
    "std",
    "interpolation",
    "color_mode",
    "target_layer",
    "stage",
    "require_gradients",
)


def run(args: argparse.Namespace) -> int:
    from striate.errors import StriateError
    from training.byom.specs import is_model_spec

    if args.fp16 and args.quantize:
        raise StriateError("--fp16 and --quantize int8 are alternatives; choose one")
    if args.calib_images is not None and not args.quantize:
        raise StriateError("--calib-images only applies with --quantize int8")
    if is_model_spec(args.source):
        return _export_spec(args)
    given = [f"--{k.replace('_', '-')}" for k in SPEC_ONLY if getattr(args, k) not in (None, False, [])]
    if given:
        raise StriateError(f"{', '.join(given)} apply to model specs; a checkpoint describes itself")
    return _export_checkpoint(args)


def _export_checkpoint(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint
    from training.export.api import CALIB_IMAGES

    path = export_checkpoint(
        args.source,
        args.name,
        version=args.version,
        out_root=args.out,
        quantize=args.quantize,
        calib_images=CALIB_IMAGES if args.calib_images is None else args.calib_images,
    )
    _convert_fp16(args, path)
    _report(path)
    return 0


def _json_object(text: str, flag: str) -> dict:
    from striate.errors import StriateError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StriateError(f"{flag} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise StriateError(f"{flag} must be a JSON object, e.g. '{{\"num_classes\": 10}}', got {text!r}")
    return value


def _export_spec(args: argparse.Namespace) -> int:
    from striate.errors import StriateError
    from training.byom.from_spec import Overrides, export_spec, prepare

    if args.quantize:
        raise StriateError("--quantize applies to Striate checkpoints; export a model spec in float32")
    kwargs = _json_object(args.kwargs, "--kwargs") if args.kwargs is not None else None
    overrides = Overrides(args.size, args.resize, args.mean, args.std, args.interpolation, args.color_mode)
    prepared = prepare(
        args.source,
        kwargs=kwargs,
        weights=args.weights,
        pretrained=args.pretrained,
        random_init=args.random_init,
        labels_file=args.labels,
        overrides=overrides,
    )
    print(
        f"{prepared.spec.origin}: weights from {prepared.weights}, {len(prepared.labels)} labels from "
        f"{prepared.labels_from}, preprocessing from {prepared.preprocessing_from}"
    )
    path = export_spec(
        prepared,
        args.name,
        args.version,
        args.out,
        target_layer=args.target_layer,
        stages=args.stage,
        require_gradients=args.require_gradients,
    )
    _convert_fp16(args, path)
    _report(path)
    return 0


def _convert_fp16(args: argparse.Namespace, path) -> None:
    if args.fp16:
        from training.export.fp16 import convert_bundle

        fp16 = convert_bundle(path)
        print(f"float16 graph: logits within {fp16.max_abs_diff_logits:.2g}, top-1 agreement {fp16.top1_agreement:.0%}")


def _report(path) -> None:
    from striate.manifest import Manifest

    manifest = Manifest.load(path)
    parity = manifest.provenance.parity
    print(f"wrote {path}/ ({manifest.architecture}, {len(manifest.labels)} classes, opset {manifest.provenance.opset})")
    if parity is not None:
        cam = f", cam {parity.max_abs_diff_cam:.2g}" if parity.max_abs_diff_cam is not None else ""
        print(
            f"parity on {parity.images} real images: logits {parity.max_abs_diff_logits:.2g}, "
            f"embedding {parity.max_abs_diff_embedding:.2g}{cam} (tolerance {parity.tolerance:g})"
        )
    explain = manifest.explain
    if explain is not None:
        methods = ", ".join(explain.gradient_methods) or f"none (gradient-free methods only: {explain.no_gradients})"
        print(f"explains layer {explain.target_layer!r}; gradient methods: {methods}")
    if "accuracy_int8" in manifest.metrics:
        m = manifest.metrics
        print(f"held-out accuracy: float32 {m['accuracy_float32']:.4f} -> int8 {m['accuracy_int8']:.4f}")
