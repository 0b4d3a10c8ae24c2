"""`striate export CHECKPOINT --name NAME`: write a checked ONNX bundle version to exported/."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Striate checkpoint (.pt) from `striate train` or `striate finetune`")
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


def run(args: argparse.Namespace) -> int:
    from striate.errors import StriateError
    from striate.manifest import Manifest
    from training.export import export_checkpoint
    from training.export.api import CALIB_IMAGES

    if args.fp16 and args.quantize:
        raise StriateError("--fp16 and --quantize int8 are alternatives; choose one")
    if args.calib_images is not None and not args.quantize:
        raise StriateError("--calib-images only applies with --quantize int8")
    path = export_checkpoint(
        args.checkpoint,
        args.name,
        version=args.version,
        out_root=args.out,
        quantize=args.quantize,
        calib_images=CALIB_IMAGES if args.calib_images is None else args.calib_images,
    )
    if args.fp16:
        from training.export.fp16 import convert_bundle

        fp16 = convert_bundle(path)
        print(f"float16 graph: logits within {fp16.max_abs_diff_logits:.2g}, top-1 agreement {fp16.top1_agreement:.0%}")
    manifest = Manifest.load(path)
    parity = manifest.provenance.parity
    print(f"wrote {path}/ ({manifest.architecture}, {len(manifest.labels)} classes, opset {manifest.provenance.opset})")
    if parity is not None:
        print(
            f"parity on {parity.images} real images: logits {parity.max_abs_diff_logits:.2g}, "
            f"embedding {parity.max_abs_diff_embedding:.2g}, cam {parity.max_abs_diff_cam:.2g} "
            f"(tolerance {parity.tolerance:g})"
        )
    if "accuracy_int8" in manifest.metrics:
        m = manifest.metrics
        print(f"held-out accuracy: float32 {m['accuracy_float32']:.4f} -> int8 {m['accuracy_int8']:.4f}")
    return 0
