"""`striate features`: embeddings of many images, from an exported bundle or a torch model.

From a bundle (onnxruntime, no torch; one process or a Ray cluster; a Parquet dataset out, resumable):
  striate features exported/digits --data-dir photos/ --out emb.parquet
  striate features exported/resnet/2 --paths table.parquet --out emb.parquet --engine ray --layer embedding,layer4
From a pretrained backbone or a checkpoint (torch; one .npy + .csv or one .parquet file out):
  striate features --backbone efficientnet_lite0 --data-dir photos/ --out emb.parquet
  striate features --checkpoint runs/x/best.pt --data-dir photos/ --out emb.npy --layer stage3
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", nargs="?", help="an exported bundle (exported/<name>[/<version>]; default: its latest version)"
    )
    source = parser.add_mutually_exclusive_group()
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
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--data-dir", help="folder of images (DIR/<class>/<image> gives labels)")
    inputs.add_argument(
        "--paths", help="bundle only: a Parquet table with a `path` column (paths or URIs) and an optional `id`"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="bundle: a folder of Parquet parts (e.g. emb.parquet); otherwise a .npy (+ .csv) or .parquet file",
    )
    parser.add_argument(
        "--layer",
        default="embedding",
        help="embedding (default), logits, or a stage name (its spatially averaged map); "
        "for a bundle, a comma-separated list of its layers",
    )
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="bundle only (default: local)")
    parser.add_argument("--address", default=None, help="--engine ray: a cluster address (default: a local Ray)")
    parser.add_argument("--top-k", type=int, default=5, help="bundle only: top-k classes per image, 0 for none")
    parser.add_argument(
        "--threads", type=int, default=0, help="bundle, local engine: onnxruntime threads (default 0: every core)"
    )
    parser.add_argument("--rows-per-part", type=int, default=1024, help="bundle only: rows per Parquet part")
    parser.add_argument(
        "--resume", action="store_true", help="bundle only: add to an existing --out, skipping ids already written"
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
    from striate.errors import StriateError

    if args.bundle and (args.backbone or args.checkpoint):
        raise StriateError("give a bundle, --backbone or --checkpoint, not several")
    if args.bundle:
        return run_bundle(args)
    if not (args.backbone or args.checkpoint):
        raise StriateError("give a bundle (exported/<name>), --backbone NAME or --checkpoint FILE")
    if args.paths:
        raise StriateError("--paths reads with a bundle only; use --data-dir with --backbone/--checkpoint")
    import torch

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


def run_bundle(args: argparse.Namespace) -> int:
    """The onnxruntime path: no torch; `--engine ray` spreads it over a Ray cluster."""
    from striate.errors import StriateError

    try:
        from service.bulk import inputs
        from service.bulk.embedder import EmbedOptions, resolve_bundle
        from service.bulk.engines import JobOptions, embed_images
    except ModuleNotFoundError as exc:
        raise StriateError(f"bulk features need the 'scale' extra (pip install 'striate[scale]'): {exc}") from None
    if args.batch_size < 1 or args.rows_per_part < 1:
        raise StriateError("--batch-size and --rows-per-part must be >= 1")
    bundle = resolve_bundle(args.bundle)
    table = inputs.from_folder(args.data_dir) if args.data_dir else inputs.from_table(args.paths)
    options = EmbedOptions(
        bundle=str(bundle), layers=tuple(filter(None, args.layer.split(","))), top_k=args.top_k, threads=args.threads
    )
    job = JobOptions(out=args.out, batch_size=args.batch_size, rows_per_part=args.rows_per_part, progress=args.progress)
    engine_args = {"address": args.address} if args.engine == "ray" else {}
    summary = embed_images(table, options, job, engine=args.engine, resume=args.resume, **engine_args)
    print(
        f"{summary.rows} images embedded ({summary.errors} with errors, {summary.skipped} already written) "
        f"by {bundle} on the {args.engine} engine -> {args.out}"
    )
    return 0
