"""The training loop: epochs, validation, best/last checkpoints, resume, the run directory.

A run directory holds `best.pt` (best validation accuracy, weights only), `last.pt` (weights plus
optimizer state, step and history: what `--resume` needs), `history.json` (one dict per epoch),
`config.json` and, after training, `metrics.json` (the best model on the test split) and the report.

Reproducibility: the model is initialised from `seed`, and every epoch reseeds torch, NumPy,
`random` and the DataLoader's generator from (seed, epoch). An epoch therefore depends only on
the state at its start, which `last.pt` holds in full, so a resumed run continues exactly as an
uninterrupted one would (bit for bit on CPU).

Runs unchanged under torchrun through `training.distributed`: only rank 0 writes files and bars.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from striate.errors import StriateError

from . import distributed as dist_utils
from .checkpoint import Checkpoint, current_versions, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import DataSplits, ImageDataset, build_data
from .evaluate import classification_metrics, predict
from .models import StriateModel, create_model, model_entry

BEST, LAST, HISTORY, METRICS, CONFIG = "best.pt", "last.pt", "history.json", "metrics.json", "config.json"


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_acc: float
    test_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main: bool = True  # False on the other ranks under torchrun (they write nothing)


# --------------------------------------------------------------------------------------------
# Small named pieces


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for one epoch of one run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Linear warmup then cosine decay, per optimizer step.

    1. during warmup, rise linearly from peak_lr / warmup_steps to peak_lr;
    2. after the last step, stay at min_lr;
    3. in between, follow half a cosine from peak_lr down to min_lr.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov); no weight decay on biases and norm weights (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise StriateError(f"unknown optimizer {config.optimizer!r}: choose adamw or sgd")


def arch_kwargs(config: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "input_size": config.resolved_input_size,
    }
    if config.base_width is not None:
        kwargs["base_width"] = config.base_width
    return kwargs


def default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.arch}-{config.data}-{datetime.now():%Y%m%d-%H%M%S}"


def resolve_resume(path: str | Path) -> Path:
    """A run directory (its last.pt) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
        if not path.is_file():
            raise StriateError(f"no {LAST} in run directory {path.parent}: nothing to resume")
    return path


def check_resumable(ckpt: Checkpoint, config: TrainConfig) -> None:
    """What can be told from the checkpoint alone, before any data is read."""
    if ckpt.arch != config.arch:
        raise StriateError(f"cannot resume: the checkpoint is a {ckpt.arch}, not a {config.arch}")
    if not ckpt.train_state.get("optimizer"):
        raise StriateError(f"{ckpt.path} holds no training state (only {LAST} can be resumed)")
    if ckpt.epoch >= config.epochs:
        raise StriateError(
            f"the run already trained {ckpt.epoch} of {config.epochs} epochs; "
            f"pass --epochs N with N > {ckpt.epoch} to train further"
        )


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# One epoch


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    lr_for_step: Callable[[int], float],
    start_step: int,
    progress: bool = True,
    desc: str = "train",
) -> tuple[float, float, int]:
    """One pass over `loader`; returns (mean loss, accuracy, steps taken).

    Loss and hit counts accumulate on the device, so there is no host sync per batch except the
    progress bar's occasional refresh.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    step = start_step
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True, mininterval=0.5)
    for i, (images, targets) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        lr = lr_for_step(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(images)
        loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        n = targets.shape[0]
        seen += n
        loss_sum += loss.detach() * n
        correct += (logits.detach().argmax(1) == targets).sum()
        if progress and i % 20 == 19:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    if seen == 0:
        raise StriateError("the training split is empty")
    return loss_sum.item() / seen, correct.item() / seen, step - start_step


# --------------------------------------------------------------------------------------------
# The run


class Trainer:
    """Owns one run: data, model, optimizer, schedule, run directory. `fit()` trains it."""

    def __init__(
        self,
        config: TrainConfig,
        data: DataSplits | None = None,
        resume: Checkpoint | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.on_epoch_end = on_epoch_end  # called on every rank after each epoch's files are written
        self.resume = resume
        self.info = dist_utils.init_distributed(config.device)
        self.device = self.info.device
        self.progress = progress and self.info.is_main
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

        self.data = data if data is not None else build_data(config)
        if resume is not None:
            self._check_resume_fits(resume)
        self.labels = list(self.data.classes)
        spec = self.data.preprocessing

        seed_everything(config.seed)
        if resume is not None:
            model = resume.build_model()
        else:
            model = create_model(config.arch, **arch_kwargs(config, len(self.labels), spec.channels))
        self.model: StriateModel = model
        self.ddp_model = dist_utils.wrap_ddp(model, self.info)
        self.optimizer = build_optimizer(self.model, config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        self.train_sampler = dist_utils.make_sampler(self.data.train, self.info, shuffle=True, seed=config.seed)
        self.generator = torch.Generator()
        self.train_loader = self._loader(self.data.train, train=True)
        self.val_loader = self._loader(self.data.val, train=False)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = round(self.steps_per_epoch * config.warmup_epochs)

        self.start_epoch = 0
        self.step = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []
        if resume is not None:
            self._restore(resume)

    # -- setup helpers --

    def _check_resume_fits(self, ckpt: Checkpoint) -> None:
        check_resumable(ckpt, self.config)
        if list(ckpt.labels) != list(self.data.classes):
            raise StriateError(
                f"cannot resume: the checkpoint's {len(ckpt.labels)} classes differ from the data's "
                f"{len(self.data.classes)} ({', '.join(self.data.classes[:5])}...)"
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        state = ckpt.train_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = ckpt.epoch
        self.step = int(state["step"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [dict(row) for row in state.get("history", [])][: ckpt.epoch]

    def _loader(self, dataset: ImageDataset, train: bool) -> DataLoader:
        sampler = self.train_sampler if train else None
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=self.generator if train else None,
            persistent_workers=False,  # fresh workers each epoch, seeded from the epoch's generator
        )

    def _lr(self, step: int) -> float:
        cfg = self.config
        return lr_at(step, self.total_steps, self.warmup_steps, cfg.lr, cfg.lr * cfg.min_lr_ratio)

    # -- checkpoints --

    def _checkpoint(self, epoch: int, metrics: dict[str, float], with_state: bool) -> Checkpoint:
        model = dist_utils.unwrap_model(self.ddp_model)
        state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        train_state: dict[str, Any] = {}
        if with_state:
            train_state = {
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch,
                "history": self.history,
            }
        return Checkpoint(
            arch=self.config.arch,
            arch_kwargs=dict(getattr(model, "arch_kwargs", {})),
            state_dict=state_dict,
            labels=self.labels,
            preprocessing=self.data.preprocessing,
            metrics=metrics,
            config=self.config.to_dict(),
            data=self.data.description,
            epoch=epoch,
            # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
            versions={k: str(v) for k, v in current_versions().items()},
            train_state=train_state,
        )

    # -- the loop --

    def fit(self, run_dir: Path) -> TrainResult:
        cfg, main = self.config, self.info.is_main
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run_dir / CONFIG, cfg.to_dict())
            n_params = sum(p.numel() for p in self.model.parameters())
            _log(
                f"training {cfg.arch} ({n_params / 1e6:.2f}M parameters) on {self.data.description}: "
                f"{len(self.data.train)} train / {len(self.data.val)} val / {len(self.data.test)} test images, "
                f"device {self.device}, world size {self.info.world_size}, run directory {run_dir}"
            )
        for epoch in range(self.start_epoch, cfg.epochs):
            row = self._run_epoch(epoch)
            self.history.append(row)
            improved = row["val_acc"] > self.best_val_acc if len(self.data.val) else True
            if improved:
                self.best_val_acc, self.best_epoch = row["val_acc"], epoch + 1
            if main:
                metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                if improved:
                    save_checkpoint(self._checkpoint(epoch + 1, metrics, with_state=False), run_dir / BEST)
                save_checkpoint(self._checkpoint(epoch + 1, metrics, with_state=True), run_dir / LAST)
                _write_json(run_dir / HISTORY, self.history)
                _log(
                    f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
                    f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}"
                    f"  {row['seconds']:.1f}s{'  *best' if improved else ''}"
                )
            dist_utils.barrier()
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
        test_metrics = self._finish(run_dir) if main else {}
        dist_utils.barrier()
        return TrainResult(run_dir, self.best_epoch, self.best_val_acc, test_metrics, self.history, main)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        self.generator.manual_seed(seed)
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        start = time.perf_counter()
        lr = self._lr(self.step)
        train_loss, train_acc, steps = train_one_epoch(
            self.ddp_model,
            self.train_loader,
            self.optimizer,
            self.criterion,
            self.device,
            self._lr,
            self.step,
            progress=self.progress,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        self.step += steps
        train_loss = dist_utils.all_reduce_mean(train_loss, self.info)
        train_acc = dist_utils.all_reduce_mean(train_acc, self.info)
        val_loss, val_acc = float("nan"), float("nan")
        if self.info.is_main and len(self.data.val):
            logits, targets = predict(self.model, self.val_loader, self.device)
            val_loss = float(nn.functional.cross_entropy(logits, targets))
            val_acc = float((logits.argmax(1) == targets).double().mean())
        return {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }

    def _finish(self, run_dir: Path) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; record it in metrics.json and best.pt."""
        best = load_checkpoint(run_dir / BEST)
        model = best.build_model().to(self.device)
        loader = self._loader(self.data.test, train=False)
        logits, targets = predict(model, loader, self.device, progress=self.progress, desc="test")
        metrics = classification_metrics(targets, logits.argmax(1), self.labels, split="test")
        _write_json(run_dir / METRICS, metrics)
        best.metrics = {**best.metrics, "test_acc": metrics["accuracy"]}
        save_checkpoint(best, run_dir / BEST)
        _log(
            f"best epoch {self.best_epoch}: val acc {self.best_val_acc:.4f}, "
            f"test acc {metrics['accuracy']:.4f} ({metrics['count']} images) -> {run_dir / BEST}"
        )
        self._report(run_dir)
        return metrics

    def _report(self, run_dir: Path) -> None:
        if not self.config.report:
            return
        try:
            from training.analysis.report import write_report
        except ImportError as exc:
            _log(f"warning: report skipped ({exc})")
            return
        try:
            path = write_report(run_dir)
        except Exception as exc:  # the checkpoints are written; a plotting failure must not hide that
            _log(f"warning: report not written: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return
        _log(f"report: {path}")


def open_run(
    config: TrainConfig,
    resume: str | Path | None,
    check: Callable[[Checkpoint, TrainConfig], None] | None = None,
) -> tuple[TrainConfig, Checkpoint | None]:
    """Settle the run directory (a new one, or the one being resumed) and load the resume checkpoint.

    Returns the config with `out` set to the run directory. A fresh run refuses a directory that
    already holds one, so nothing is overwritten by accident.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resolve_resume(resume))
        if check is not None:
            check(ckpt, config)
    run_dir = Path(config.out) if config.out else None
    if ckpt is not None and run_dir is None:
        assert ckpt.path is not None
        run_dir = ckpt.path.parent
    if run_dir is None:
        run_dir = default_run_dir(config)
    elif ckpt is None and (run_dir / LAST).exists():
        raise StriateError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out"
        )
    return replace(config, out=str(run_dir)), ckpt


def fit_and_leave(trainer: Trainer, run_dir: Path) -> TrainResult:
    """Fit, then leave the process group; after a good run every rank first waits for the others."""
    try:
        result = trainer.fit(run_dir)
        dist_utils.finish(trainer.info)
        return result
    finally:
        trainer.ddp_model = None  # the DDP wrapper holds the process group: drop it before leaving
        dist_utils.cleanup()


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    data: DataSplits | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a run described by `config` (or continue the run at `resume`) and return its result."""
    model_entry(config.arch)  # an unknown architecture fails before any data is read
    config, ckpt = open_run(config, resume, check=check_resumable)
    run_dir = Path(config.out)
    trainer = Trainer(config, data=data, resume=ckpt, progress=progress, on_epoch_end=on_epoch_end)
    return fit_and_leave(trainer, run_dir)
