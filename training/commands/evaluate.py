"""`striate evaluate CHECKPOINT`: accuracy, per-class precision and recall, confusion matrix.

By default the checkpoint is evaluated on the test split of the data it was trained on (same
split seed and fractions, so the test images are the ones training never saw). `--data` /
`--data-dir` evaluate it on other data, by default on all of it (`--split all`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from striate.errors import StriateError

from ..config import TrainConfig
from ..data.sources import DATA_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or a run directory (its best.pt)")
    parser.add_argument(
        "--data",
        choices=DATA_NAMES,
        default=None,
        help="dataset (default: the one the checkpoint was trained on)",
    )
    parser.add_argument("--data-dir", default=None, help="ImageFolder root (implies --data folder)")
    parser.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default=None,
        help="which split (default: test for the training data, all for other data)",
    )
    parser.add_argument("--arch", default=None, help="fail unless the checkpoint is this architecture")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: auto")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    parser.add_argument(
        "--on-bad-image",
        choices=["skip", "fail"],
        default=None,
        help="a corrupt image in a folder: skip it or fail (default: as in training)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _data_config(args: argparse.Namespace, saved: dict) -> tuple[TrainConfig, bool]:
    """The data part of the run's config, with --data/--data-dir applied; and whether it changed."""
    try:
        base = TrainConfig.from_dict(saved)
    except (StriateError, TypeError):
        base = TrainConfig()
    if args.on_bad_image:
        base = replace(base, on_bad_image=args.on_bad_image)
    data = args.data or ("folder" if args.data_dir else None)
    if data is None:
        return base, False
    data_dir = args.data_dir if data == "folder" else None
    if data == "folder" and not data_dir:
        raise StriateError("--data folder needs --data-dir DIR")
    changed = (data, data_dir) != (base.data, base.data_dir)
    return replace(base, data=data, data_dir=data_dir), changed


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .. import distributed
    from ..checkpoint import load_checkpoint
    from ..data import build_eval_dataset
    from ..evaluate import classification_metrics, format_metrics, predict
    from ..run_dir import BEST

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / BEST
    if args.batch_size < 1:
        raise StriateError("--batch-size must be at least 1")
    ckpt = load_checkpoint(path)
    if args.arch and args.arch != ckpt.arch:
        raise StriateError(f"{path} is a {ckpt.arch} checkpoint, not a {args.arch}")
    model = ckpt.build_model()

    config, changed = _data_config(args, ckpt.config)
    split = args.split or ("all" if changed else "test")
    dataset = build_eval_dataset(config, ckpt.preprocessing, split)
    if list(dataset.classes) != list(ckpt.labels):
        raise StriateError(
            f"the checkpoint has {len(ckpt.labels)} classes ({', '.join(ckpt.labels[:6])}"
            f"{'...' if len(ckpt.labels) > 6 else ''}) but the data has {len(dataset.classes)} "
            f"({', '.join(dataset.classes[:6])}{'...' if len(dataset.classes) > 6 else ''})"
        )

    device = distributed.init_distributed(args.device).device
    torch.set_grad_enabled(False)
    model = model.to(device)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    logits, targets = predict(model, loader, device, progress=args.progress and not args.json)
    metrics = classification_metrics(targets, logits.argmax(1), list(ckpt.labels), split=split)
    metrics["checkpoint"] = str(path)
    metrics["data"] = dataset.source.name
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{path} ({ckpt.arch}) on {dataset.source.name}")
        print(format_metrics(metrics))
    return 0
