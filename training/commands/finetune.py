"""`striate finetune`: linear probe, MLP head or fine-tuning of a pretrained backbone.

Examples:
  striate finetune --backbone efficientnet_lite0 --weights imagenet --data digits --mode probe
  striate finetune --backbone resnet18 --weights /path/resnet18-f37072fd.pth --data-dir photos/ \\
      --mode finetune --unfreeze-stages 2 --body-lr-mult 0.1
  striate finetune --backbone efficientnet_lite0 --pretrained-only --out lite0_imagenet.pt
      (the ImageNet classifier itself as a checkpoint, for `striate export`)
Runs unchanged under `torchrun --nproc_per_node=N -m striate.cli finetune ...`.
"""

from __future__ import annotations

import argparse
from typing import Any

from striate.errors import StriateError

from ..finetune import MODES, FinetuneConfig
from .common import add_recipe_arguments, explicit_options, flag, print_result, report_hook

D = FinetuneConfig.default

_FIELD_FLAGS = {
    "arch": "--backbone",
    "weights": "--weights",
    "mode": "--mode",
    "unfreeze_stages": "--unfreeze-stages",
    "body_lr_mult": "--body-lr-mult",
    "head_hidden": "--head-hidden",
    "input_size": "--input-size",
    "data": "--data",
    "data_dir": "--data-dir",
    "color_mode": "--color-mode",
    "val_fraction": "--val-fraction",
    "test_fraction": "--test-fraction",
    "data_seed": "--data-seed",
    "shapes_per_class": "--shapes-per-class",
    "on_bad_image": "--on-bad-image",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "optimizer": "--optimizer",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "warmup_epochs": "--warmup-epochs",
    "label_smoothing": "--label-smoothing",
    "seed": "--seed",
    "device": "--device",
    "workers": "--workers",
    "out": "--out",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group: Any = parser

    def opt(dest: str, help_: str, **kw: Any) -> None:
        group.add_argument(_FIELD_FLAGS[dest], dest=dest, default=None, help=f"{help_} (default: {D(dest)})", **kw)

    group = parser.add_argument_group("backbone")
    opt("arch", "pretrained backbone, e.g. efficientnet_lite0, resnet18 (see `striate models`)")
    opt(
        "weights",
        "'imagenet', a torchvision weights name (IMAGENET1K_V1...), a local .pth file, or 'none' to train from scratch",
    )
    opt(
        "mode",
        "probe: frozen body + linear head; mlp: frozen body + MLP head; finetune: train the body too",
        choices=list(MODES),
    )
    opt("unfreeze_stages", "finetune only the last N stages (stem and earlier stages stay frozen)", type=int)
    opt("body_lr_mult", "the pretrained body learns at lr * this", type=float)
    opt("head_hidden", "hidden width of the MLP head (mode mlp: 256 when unset)", type=int)
    opt("input_size", "square input side; default 64 for digits/shapes, 224 for folders", type=int)

    group = parser.add_argument_group("data")
    opt("data", "dataset", choices=["digits", "shapes", "folder"])
    opt("data_dir", "ImageFolder root DIR/<class>/<image> (or DIR/{train,val,test}/<class>/...)")
    opt("color_mode", "input colour mode (default L for digits, RGB otherwise)", choices=["L", "RGB"])
    opt("val_fraction", "validation share of each class", type=float)
    opt("test_fraction", "test share of each class", type=float)
    opt("data_seed", "seed of the split and of the generated shapes", type=int)
    opt("shapes_per_class", "images per class of the generated shapes dataset", type=int)
    opt("on_bad_image", "a corrupt image in a folder: skip it or fail", choices=["skip", "fail"])
    group.add_argument(
        "--no-augment", dest="augment", action="store_false", default=None, help="train without augmentation"
    )

    group = parser.add_argument_group("optimisation and run")
    opt("epochs", "epochs", type=int)
    opt("batch_size", "images per batch (per process under torchrun)", type=int)
    opt("optimizer", "optimizer", choices=["adamw", "sgd"])
    opt("lr", "peak learning rate of the new head (warmup, then cosine decay)", type=float)
    opt("weight_decay", "weight decay (not on biases and norm weights)", type=float)
    opt("warmup_epochs", "epochs of linear warmup", type=float)
    opt("label_smoothing", "label smoothing", type=float)
    opt("seed", "seed of the new head, shuffling and augmentation", type=int)
    opt("device", "where to train", choices=["auto", "cpu", "cuda"])
    opt("workers", "DataLoader worker processes", type=int)
    opt("out", "run directory (default runs/<backbone>-<data>-<timestamp>); with --pretrained-only, the .pt path")
    add_recipe_arguments(parser, D)
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR_OR_LAST_PT",
        default=None,
        help="continue a fine-tuning run (options that define the run cannot change)",
    )
    parser.add_argument(
        "--pretrained-only",
        action="store_true",
        help="write the backbone with its ImageNet classifier (1000 labels, its own preprocessing) "
        "as a checkpoint to --out, without training",
    )
    parser.add_argument(
        "--no-report", dest="report", action="store_false", default=None, help="do not write the PNG/HTML report"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")


def finetune_flag(name: str) -> str:
    return _FIELD_FLAGS.get(name, flag(name))


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(**_explicit(args))


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    values = explicit_options(args, FinetuneConfig)
    if isinstance(values.get("weights"), str) and values["weights"].lower() in ("none", "scratch"):
        values["weights"] = None
    return values


def run(args: argparse.Namespace) -> int:
    from ..finetune import finetune, save_pretrained_checkpoint
    from ..models.backbones import resolve_backbone_name
    from ..resume import load_resumable, resumed_config

    if args.pretrained_only:
        if not args.out:
            raise StriateError("--pretrained-only needs --out PATH.pt (the checkpoint to write)")
        backbone = resolve_backbone_name(args.arch or D("arch"))
        weights = args.weights or D("weights")
        path = save_pretrained_checkpoint(backbone, weights, args.out, args.input_size)
        print(
            f"{path}: {backbone} with its ImageNet classifier ({weights}); export it with "
            f"`striate export {path} --name <name>`"
        )
        return 0
    if args.resume:
        ckpt = load_resumable(args.resume, "finetune")  # the one load of the checkpoint
        config = resumed_config(FinetuneConfig, ckpt, _explicit(args), finetune_flag)
        result = finetune(config, resume=ckpt, progress=args.progress, report=report_hook(config))
    else:
        config = config_from_args(args)
        result = finetune(config, progress=args.progress, report=report_hook(config))
    print_result(result)
    return 0
