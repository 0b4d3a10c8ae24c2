"""`striate features`: write the embeddings of a folder of images to .npy (+ .csv index) or .parquet.

Examples:
  striate features --backbone efficientnet_lite0 --data-dir photos/ --out emb.parquet
  striate features --checkpoint runs/x/best.pt --data-dir photos/ --out emb.npy --layer stage3
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="a pretrained backbone by name, e.g. efficientnet_lite0, resnet18")
    source.add_argument("--checkpoint", help="a Striate checkpoint (.pt) from `striate train` / `finetune`")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="backbone weights: 'imagenet', a torchvision weights name, or a local file (default: imagenet)",
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="backbone input side (default: its pretrained size, 224)"
    )
    parser.add_argument("--data-dir", required=True, help="folder of images (DIR/<class>/<image> gives labels)")
    parser.add_argument("--out", required=True, help="output file: .npy (plus a .csv of paths/labels) or .parquet")
    parser.add_argument(
        "--layer", default="embedding", help="embedding (default), logits, or a stage name (its spatially averaged map)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    parser.add_argument(
        "--on-bad-image",
        default="skip",
        choices=["skip", "fail"],
        help="an unreadable image: skip it with a warning (default) or fail",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from striate.errors import StriateError

    from ..features import FORMATS, extract_features, scan_images, write_features

    if not args.out.lower().endswith(FORMATS):
        raise StriateError(f"--out must end with {' or '.join(FORMATS)}, not {args.out!r}")
    if args.batch_size < 1 or args.workers < 0:
        raise StriateError("--batch-size must be >= 1 and --workers >= 0")
    images = scan_images(args.data_dir)
    if args.checkpoint:
        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        model, spec, what = ckpt.build_model(), ckpt.preprocessing, f"checkpoint {args.checkpoint}"
    else:
        from ..models import create_model
        from ..models.backbones import resolve_backbone_name

        name = resolve_backbone_name(args.backbone)
        model = create_model(name, weights=args.weights, input_size=args.input_size)
        spec, what = model.preprocessing, f"{name} ({args.weights})"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise StriateError("--device cuda asked for but CUDA is not available")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    vectors, kept = extract_features(
        model,
        spec,
        images,
        layer=args.layer,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        progress=args.progress,
        on_bad_image=args.on_bad_image,
    )
    written = write_features(args.out, vectors, [str(images.paths[i]) for i in kept], [images.labels[i] for i in kept])
    skipped = len(images.paths) - len(kept)
    print(
        f"{len(kept)} images x {vectors.shape[1]} ({args.layer} of {what})"
        f"{f', {skipped} unreadable skipped' if skipped else ''} -> {', '.join(map(str, written))}"
    )
    return 0
