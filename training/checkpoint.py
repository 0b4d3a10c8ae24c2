"""Self-describing checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint holds only tensors and plain Python values (no pickled objects): the architecture
name and its builder arguments, the weights, labels, the exact eval preprocessing, metrics, the run
config and library versions. Export and evaluation need nothing else.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

import striate
from striate.errors import StriateError
from striate.manifest import Preprocessing

from .models import StriateModel, create_model
from .safe_load import UnreadableFile, read_plain

FORMAT = "striate-checkpoint/1"
CHECKPOINT_HINT = "pass a best.pt or last.pt written by `striate train` or `striate finetune`"


@dataclass
class Checkpoint:
    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    labels: list[str]
    preprocessing: Preprocessing
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    epoch: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    # Resume state (optional): optimizer / scheduler state dicts, best metric so far.
    train_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def build_model(self) -> StriateModel:
        """Rebuild the architecture and load the weights strictly; returned in eval mode."""
        model = create_model(self.arch, **self.arch_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise StriateError(f"checkpoint weights do not fit architecture {self.arch!r}: {first}") from None
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "state_dict": self.state_dict,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.model_dump(mode="json"),
            "metrics": dict(self.metrics),
            "config": self.config,
            "data": self.data,
            "epoch": self.epoch,
            "versions": self.versions or current_versions(),
            "train_state": self.train_state,
        }


def current_versions() -> dict[str, str]:
    return {
        "striate": striate.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt.to_dict(), tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise StriateError(f"checkpoint not found: {path}")
    try:
        raw = read_plain(path)
    except UnreadableFile as exc:
        raise StriateError(f"{path} is not a Striate checkpoint: {exc.reason}; {CHECKPOINT_HINT}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise StriateError(f"{path} is not a Striate checkpoint (no format {FORMAT!r}); {CHECKPOINT_HINT}")
    return Checkpoint(
        arch=raw["arch"],
        arch_kwargs=dict(raw["arch_kwargs"]),
        state_dict=raw["state_dict"],
        labels=list(raw["labels"]),
        preprocessing=Preprocessing.model_validate(raw["preprocessing"]),
        metrics=dict(raw.get("metrics", {})),
        config=dict(raw.get("config", {})),
        data=raw.get("data", ""),
        epoch=int(raw.get("epoch", 0)),
        versions=dict(raw.get("versions", {})),
        train_state=dict(raw.get("train_state", {})),
        path=path,
    )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
