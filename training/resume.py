"""One resume policy for `striate train` and `striate finetune`.

A run is defined by its saved config; resuming continues it. Only the options in `MAY_CHANGE`
may differ on resume (how long, where, with what resources); any other explicit option that
differs is refused with one line naming it. A run of one kind (training from scratch or
fine-tuning) is never resumed by the other command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from striate.errors import StriateError

from .checkpoint import Checkpoint, load_checkpoint
from .config import TrainConfig
from .run_dir import LAST, resume_path

RunKind = Literal["train", "finetune"]
C = TypeVar("C", bound=TrainConfig)

# Options that may change when a run is resumed; the rest define the run and must stay as they were.
MAY_CHANGE = frozenset(
    {"epochs", "device", "workers", "out", "report", "data_dir", "on_bad_image", "deterministic", "compile"}
)


def run_kind(config: dict[str, Any]) -> RunKind:
    """A checkpoint's kind, told by the options only fine-tuning has (mode, weights, ...)."""
    from .finetune import FinetuneConfig  # fine-tuning builds on the engine: import late

    own = {f.name for f in fields(FinetuneConfig)} - set(TrainConfig.field_names())
    return "finetune" if own & set(config) else "train"


def describe_run(ckpt: Checkpoint) -> str:
    if run_kind(ckpt.config) == "finetune":
        return f"a fine-tuning run of {ckpt.arch} (mode {ckpt.config.get('mode', '?')})"
    return f"a training run of {ckpt.arch}"


def load_resumable(path: str | Path | Checkpoint, kind: RunKind) -> Checkpoint:
    """The checkpoint to resume (a run directory's last.pt, or a file), checked to be of `kind`."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(resume_path(path))
    found = run_kind(ckpt.config)
    where = ckpt.path.parent if ckpt.path is not None and ckpt.path.name == LAST else ckpt.path
    if found != kind:
        raise StriateError(
            f"{where} is {describe_run(ckpt)}, not a {kind} run; continue it with `striate {found} --resume {where}`"
        )
    if not ckpt.train_state.get("optimizer"):
        raise StriateError(f"{ckpt.path} holds no training state (only {LAST} can be resumed)")
    return ckpt


def resumed_config(cls: type[C], ckpt: Checkpoint, explicit: dict[str, Any], flag: Callable[[str], str]) -> C:
    """The run's saved config with the explicit options that may change applied; others refused.

    `explicit` holds only the options the user gave; `flag(name)` spells an option as on the command line.
    """
    base = cls.from_dict(ckpt.config)
    for key, value in explicit.items():
        if key not in MAY_CHANGE and value != getattr(base, key):
            allowed = ", ".join(sorted(flag(k) for k in MAY_CHANGE))
            raise StriateError(
                f"{flag(key)} cannot change when resuming (the run used {getattr(base, key)!r}); only {allowed} can"
            )
    overrides = {k: v for k, v in explicit.items() if k in MAY_CHANGE}
    overrides.setdefault("out", None)  # continue in the directory the checkpoint is in
    return replace(base, **overrides)


def check_resumable(ckpt: Checkpoint, config: TrainConfig) -> None:
    """What can be told from the checkpoint and the config alone, before any data is read."""
    if ckpt.arch != config.arch:
        raise StriateError(f"cannot resume: the checkpoint is a {ckpt.arch}, not a {config.arch}")
    if ckpt.epoch >= config.epochs:
        raise StriateError(
            f"the run already trained {ckpt.epoch} of {config.epochs} epochs; "
            f"pass --epochs N with N > {ckpt.epoch} to train further"
        )


def check_same_classes(ckpt: Checkpoint, classes: list[str]) -> None:
    if list(ckpt.labels) != list(classes):
        raise StriateError(
            f"cannot resume: the checkpoint's {len(ckpt.labels)} classes differ from the data's "
            f"{len(classes)} ({', '.join(classes[:5])}...)"
        )
