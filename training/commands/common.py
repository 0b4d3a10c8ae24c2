"""What `striate train` and `striate finetune` share: recipe flags, explicit options, the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import TrainConfig

ReportHook = Callable[[Path], None]


def flag(name: str) -> str:
    """A config field as spelled on the command line."""
    return "--" + name.replace("_", "-")


def add_recipe_arguments(parser: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """The recipe options (each recorded in the checkpoint) and the reproducibility switch."""
    g = parser.add_argument_group("recipe (see the README's recipe table for what each option gains)")

    def opt(dest: str, help_: str, **kw: Any) -> None:
        g.add_argument(flag(dest), dest=dest, default=None, help=f"{help_} (default: {default(dest)})", **kw)

    on_off = {"action": argparse.BooleanOptionalAction}
    opt("ema", "evaluate and export an exponential moving average of the weights", **on_off)
    opt("ema_decay", "EMA decay per step (warmed up as (1 + n) / (10 + n))", type=float)
    opt("mixup", "MixUp alpha, 0 for off", type=float, metavar="ALPHA")
    opt("cutmix", "CutMix alpha, 0 for off (with --mixup: one of the two per batch)", type=float, metavar="ALPHA")
    opt("trivial_augment", "TrivialAugmentWide on each training image", **on_off)
    opt("random_erasing", "probability of erasing a random rectangle of each training image", type=float, metavar="P")
    opt("amp", "mixed precision (CUDA only; on CPU it stays off and says so)", **on_off)
    opt("channels_last", "channels-last memory format (CUDA only; on CPU it stays off and says so)", **on_off)
    opt("compile", "torch.compile the training forward (compiling takes a while)", **on_off)
    opt("deterministic", "torch.use_deterministic_algorithms(True) while training", **on_off)


def explicit_options(args: argparse.Namespace, cls: type[TrainConfig]) -> dict[str, Any]:
    """The config fields the user gave on the command line (argparse leaves the others None)."""
    values = {k: getattr(args, k) for k in cls.field_names() if getattr(args, k, None) is not None}
    if values.get("data_dir") and "data" not in values:
        values["data"] = "folder"  # --data-dir alone means an ImageFolder
    return values


def report_hook(config: TrainConfig) -> ReportHook | None:
    """The PNG/HTML report writer, unless --no-report; a plotting failure only warns (the run is saved)."""
    if not config.report:
        return None

    def write(run_dir: Path) -> None:
        try:
            from training.analysis.report import write_report

            path = write_report(run_dir)
        except Exception as exc:  # the checkpoints are written; a plotting failure must not hide that
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"warning: report not written: {first}", file=sys.stderr)
            return
        print(f"report: {path}", file=sys.stderr)

    return write


def print_result(result: Any) -> None:
    """One summary line on stdout, from rank 0 only (the other ranks hold no metrics)."""
    if result.is_main:
        print(
            f"{result.run_dir}: best epoch {result.best_epoch}, val acc {result.best_val_acc:.4f}, "
            f"test acc {result.test_metrics.get('accuracy', float('nan')):.4f}"
        )
