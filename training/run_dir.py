"""A run directory and the files it holds; the one place that knows their names.

- `best.pt`: the best validation accuracy's weights (the ones to evaluate and export);
- `last.pt`: the latest epoch's weights plus optimizer state, step and history (what `--resume` reads);
- `history.json`: one dict per epoch; `config.json`: the run's config;
- `metrics.json`: the best model on the test split, written after training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from striate.errors import StriateError

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint

BEST, LAST, HISTORY, METRICS, CONFIG = "best.pt", "last.pt", "history.json", "metrics.json", "config.json"


def write_json(path: Path, value: Any) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def resume_path(path: str | Path) -> Path:
    """What `--resume` names: a run directory (its last.pt) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
        if not path.is_file():
            raise StriateError(f"no {LAST} in run directory {path.parent}: nothing to resume")
    return path


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def choose(cls, out: str | None, arch: str, data: str, resumed: Checkpoint | None) -> RunDir:
        """`out`, else the resumed checkpoint's directory, else runs/<arch>-<data>-<timestamp>.

        A fresh run refuses a directory that already holds one, so nothing is overwritten by accident.
        """
        if out:
            run = cls(Path(out))
            if resumed is None and run.last.exists():
                raise StriateError(
                    f"{run.path} already holds a run; continue it with --resume {run.path} or choose another --out"
                )
            return run
        if resumed is not None and resumed.path is not None:
            return cls(resumed.path.parent)
        return cls(Path("runs") / f"{arch}-{data}-{datetime.now():%Y%m%d-%H%M%S}")

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    def start(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG, config)

    def save_best(self, ckpt: Checkpoint) -> None:
        save_checkpoint(ckpt, self.best)

    def save_last(self, ckpt: Checkpoint) -> None:
        save_checkpoint(ckpt, self.last)

    def load_best(self) -> Checkpoint:
        return load_checkpoint(self.best)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.path / HISTORY, history)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS, metrics)
