"""`striate train`: train an architecture on digits, generated shapes or an ImageFolder directory.

Options left out take `TrainConfig`'s defaults, or, with `--resume`, the resumed run's own values.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from striate.errors import StriateError

from ..config import TrainConfig
from ..data.sources import DATA_NAMES

D = TrainConfig.default

# Options that may change when a run is resumed; the rest define the run and must stay as they were.
RESUMABLE_OVERRIDES = {"epochs", "device", "workers", "out", "report", "data_dir", "on_bad_image"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def opt(group: Any, flag: str, dest: str, help_: str, **kw: Any) -> None:
        group.add_argument(flag, dest=dest, default=None, help=f"{help_} (default: {D(dest)})", **kw)

    g = parser.add_argument_group("model")
    opt(g, "--arch", "arch", "architecture name, see `striate models`")
    opt(g, "--input-size", "input_size", "square input side; None: 32 for digits/shapes, 224 for folders", type=int)
    opt(g, "--base-width", "base_width", "width of the first stage (None: the architecture's own)", type=int)

    g = parser.add_argument_group("data")
    opt(g, "--data", "data", "dataset", choices=DATA_NAMES)
    opt(g, "--data-dir", "data_dir", "ImageFolder root DIR/<class>/<image> (or DIR/{train,val,test}/<class>/...)")
    opt(g, "--color-mode", "color_mode", "input colour mode (None: L for digits, RGB otherwise)", choices=["L", "RGB"])
    opt(g, "--val-fraction", "val_fraction", "validation share of each class", type=float)
    opt(g, "--test-fraction", "test_fraction", "test share of each class", type=float)
    opt(g, "--data-seed", "data_seed", "seed of the train/val/test split and of the generated shapes", type=int)
    opt(g, "--shapes-per-class", "shapes_per_class", "images per class of the generated shapes", type=int)
    opt(
        g,
        "--on-bad-image",
        "on_bad_image",
        "a corrupt image in a folder: skip it (with a warning) or fail",
        choices=["skip", "fail"],
    )
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no augmentation")

    g = parser.add_argument_group("optimisation")
    opt(g, "--epochs", "epochs", "total epochs (when resuming: the new total)", type=int)
    opt(g, "--batch-size", "batch_size", "images per batch (per process under torchrun)", type=int)
    opt(g, "--optimizer", "optimizer", "optimizer", choices=["adamw", "sgd"])
    opt(g, "--lr", "lr", "peak learning rate (linear warmup, then cosine decay)", type=float)
    opt(g, "--weight-decay", "weight_decay", "weight decay (not on biases and norm weights)", type=float)
    opt(g, "--warmup-epochs", "warmup_epochs", "epochs of linear learning-rate warmup", type=float)
    opt(g, "--label-smoothing", "label_smoothing", "label smoothing of the cross-entropy loss", type=float)

    g = parser.add_argument_group("run")
    opt(g, "--seed", "seed", "seed of the initialisation, shuffling and augmentation", type=int)
    opt(g, "--device", "device", "where to train", choices=["auto", "cpu", "cuda"])
    opt(g, "--workers", "workers", "DataLoader worker processes", type=int)
    opt(g, "--out", "out", "run directory (None: runs/<arch>-<data>-<timestamp>)")
    g.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_LAST_PT",
        default=None,
        help="continue a run: epochs, optimizer and schedule state from its last.pt",
    )
    g.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        default=None,
        help="do not write the PNG/HTML report after training",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="no progress bars (the per-epoch lines are still printed)",
    )


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    values = {k: getattr(args, k) for k in TrainConfig.field_names() if getattr(args, k, None) is not None}
    if values.get("data_dir") and "data" not in values:
        values["data"] = "folder"  # --data-dir alone means an ImageFolder
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A fresh run's config: the explicit options over TrainConfig's defaults."""
    return TrainConfig(**_explicit(args))


def resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> TrainConfig:
    """The resumed run's saved config, with the few options that may change applied."""
    base = TrainConfig.from_dict(saved)
    explicit = _explicit(args)
    for key, value in explicit.items():
        if key not in RESUMABLE_OVERRIDES and value != getattr(base, key):
            raise StriateError(
                f"--{key.replace('_', '-')} cannot change when resuming (the run used {getattr(base, key)!r}); "
                f"only {', '.join(sorted('--' + k.replace('_', '-') for k in RESUMABLE_OVERRIDES))} can"
            )
    overrides = {k: v for k, v in explicit.items() if k in RESUMABLE_OVERRIDES}
    overrides.setdefault("out", None)  # continue in the directory the checkpoint is in
    return replace(base, **overrides)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..engine import resolve_resume, train

    if args.resume:
        ckpt_path = resolve_resume(args.resume)
        config = resumed_config(args, load_checkpoint(ckpt_path).config)
        result = train(config, resume=ckpt_path, progress=args.progress)
    else:
        result = train(config_from_args(args), progress=args.progress)
    if result.is_main:
        print(
            f"{result.run_dir}: best epoch {result.best_epoch}, val acc {result.best_val_acc:.4f}, "
            f"test acc {result.test_metrics.get('accuracy', float('nan')):.4f}"
        )
    return 0
