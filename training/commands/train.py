"""`striate train`: train an architecture on digits, generated shapes or an ImageFolder directory.

Options left out take `TrainConfig`'s defaults, or, with `--resume`, the resumed run's own values
(`training.resume` says which options may change on resume).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import TrainConfig
from ..data.sources import DATA_NAMES
from .common import add_recipe_arguments, explicit_options, flag, print_result, report_hook

D = TrainConfig.default


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

    add_recipe_arguments(parser, D)

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


def run(args: argparse.Namespace) -> int:
    from ..engine import train
    from ..resume import load_resumable, resumed_config

    explicit = explicit_options(args, TrainConfig)
    if args.resume:
        ckpt = load_resumable(args.resume, "train")  # the one load of the checkpoint
        config = resumed_config(TrainConfig, ckpt, explicit, flag)
        result = train(config, resume=ckpt, progress=args.progress, report=report_hook(config))
    else:
        config = TrainConfig(**explicit)
        result = train(config, progress=args.progress, report=report_hook(config))
    print_result(result)
    return 0
