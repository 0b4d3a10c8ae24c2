"""The training loop: `Trainer` runs epochs over parts already built (see `training.parts`).

The command builds the parts (model, optimizer, loaders, schedule) and a `RunDir`; `Trainer`
trains, validates, keeps best/last checkpoints and history in the run directory, evaluates the
best model on the test split, and finally calls the report callback it was given.

Reproducibility: the model is initialised from `seed`, and every epoch reseeds torch, NumPy,
`random` and the DataLoader's generator from (seed, epoch). An epoch therefore depends only on
the state at its start, which `last.pt` holds in full, so a resumed run continues exactly as an
uninterrupted one would. On CPU, the same seed and the same thread count give bit-identical
weights (a different thread count may round reductions differently); `deterministic=True` also
turns on torch's deterministic algorithms.

Runs unchanged under torchrun through `training.distributed`: only rank 0 writes files and bars.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from striate.errors import StriateError

from . import distributed as dist_utils
from .checkpoint import Checkpoint, current_versions
from .config import TrainConfig
from .data import DataSplits, build_data
from .evaluate import classification_metrics, predict
from .models import StriateModel, model_entry
from .parts import Schedule, TrainParts, epoch_seed, lr_at, scratch_parts, seed_everything
from .recipe import Precision, deterministic_algorithms, make_batch_mixer, make_ema
from .resume import check_resumable, check_same_classes, load_resumable
from .run_dir import RunDir

__all__ = ["TrainResult", "Trainer", "fit_and_leave", "lr_at", "open_run", "run_training", "train", "train_one_epoch"]

EpochHook = Callable[[dict[str, Any]], None]
ReportHook = Callable[[Path], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_val_acc: float
    test_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    is_main: bool = True  # False on the other ranks under torchrun (they write nothing)


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    lr_for_step: Schedule,
    start_step: int,
    progress: bool = True,
    desc: str = "train",
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    precision: Precision = Precision(),
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[], None] | None = None,
) -> tuple[float, float, int]:
    """One pass over `loader`; returns (mean loss, accuracy on the unmixed labels, steps taken).

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
        inputs, goal = mixer(images, targets) if mixer is not None else (images, targets)
        inputs = precision.images(inputs.to(device, non_blocking=True))
        goal = goal.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        lr = lr_for_step(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with precision.autocast(device):
            logits = model(inputs)
            loss = criterion(logits, goal)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if after_step is not None:
            after_step()
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


class Trainer:
    """Runs the epochs of one run over parts already built; writes its files through `run`."""

    def __init__(
        self,
        config: TrainConfig,
        data: DataSplits,
        parts: TrainParts,
        info: dist_utils.DistInfo,
        run: RunDir,
        progress: bool = True,
        on_epoch_end: EpochHook | None = None,
        report: ReportHook | None = None,
    ) -> None:
        self.config, self.data, self.parts, self.info, self.run = config, data, parts, info, run
        self.device = info.device
        self.progress = progress and info.is_main
        self.on_epoch_end = on_epoch_end  # called on every rank after each epoch's files are written
        self.report = report  # called on rank 0 with the run directory once the test metrics are written
        self.labels = list(data.classes)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

        self.precision = Precision.choose(config, self.device, log if info.is_main else lambda _: None)
        model = parts.model
        if self.precision.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model: StriateModel = model
        self.ddp_model: nn.Module | None = dist_utils.wrap_ddp(model, info)
        self.forward_model = torch.compile(self.ddp_model) if config.compile else self.ddp_model
        self.ema = make_ema(model, config.ema_decay) if config.ema else None
        self.mixer = make_batch_mixer(config, len(self.labels))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)

        self.start_epoch = 0
        self.step = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.history: list[dict[str, Any]] = []

    @property
    def eval_model(self) -> StriateModel:
        """What is validated, tested, saved as the checkpoint's weights and exported: the EMA if on."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from `ckpt`'s training state (the model's weights came with the parts)."""
        state = ckpt.train_state
        self.parts.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = ckpt.epoch
        self.step = int(state["step"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [dict(row) for row in state.get("history", [])][: ckpt.epoch]
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.state_dict, strict=True)
            self.ema.n_averaged.fill_(int(state.get("ema_updates", self.step)))
        if "grad_scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])

    def _checkpoint(self, epoch: int, metrics: dict[str, float], with_state: bool) -> Checkpoint:
        def plain(module: nn.Module) -> dict[str, torch.Tensor]:
            contiguous = torch.contiguous_format  # whatever layout training used (channels_last)
            state = module.state_dict()
            return {k: v.detach().to("cpu", memory_format=contiguous, copy=True) for k, v in state.items()}

        train_state: dict[str, Any] = {}
        if with_state:
            train_state = {
                "optimizer": self.parts.optimizer.state_dict(),
                "step": self.step,
                "best_val_acc": self.best_val_acc,
                "best_epoch": self.best_epoch,
                "history": self.history,
            }
            if self.ema is not None:
                train_state |= {"model": plain(self.model), "ema_updates": int(self.ema.n_averaged)}
            if self.scaler.is_enabled():
                train_state["grad_scaler"] = self.scaler.state_dict()
        return Checkpoint(
            arch=self.config.arch,
            arch_kwargs=dict(getattr(self.model, "arch_kwargs", {})),
            state_dict=plain(self.eval_model),
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

    def fit(self) -> TrainResult:
        cfg, main = self.config, self.info.is_main
        if main:
            self.run.start(cfg.to_dict())
            n_params = sum(p.numel() for p in self.model.parameters())
            log(
                f"training {cfg.arch} ({n_params / 1e6:.2f}M parameters) on {self.data.description}: "
                f"{len(self.data.train)} train / {len(self.data.val)} val / {len(self.data.test)} test images, "
                f"device {self.device}, {torch.get_num_threads()} threads, world size {self.info.world_size}, "
                f"run directory {self.run.path}"
            )
        with deterministic_algorithms(cfg.deterministic):
            for epoch in range(self.start_epoch, cfg.epochs):
                self._epoch(epoch)
            test_metrics = self._finish() if main else {}
        dist_utils.barrier()
        return TrainResult(self.run.path, self.best_epoch, self.best_val_acc, test_metrics, self.history, main)

    def _epoch(self, epoch: int) -> None:
        cfg, main = self.config, self.info.is_main
        row = self._train_and_validate(epoch)
        self.history.append(row)
        improved = row["val_acc"] > self.best_val_acc if len(self.data.val) else True
        if improved:
            self.best_val_acc, self.best_epoch = row["val_acc"], epoch + 1
        if main:
            metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
            if improved:
                self.run.save_best(self._checkpoint(epoch + 1, metrics, with_state=False))
            self.run.save_last(self._checkpoint(epoch + 1, metrics, with_state=True))
            self.run.write_history(self.history)
            log(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
                f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}"
                f"  {row['seconds']:.1f}s{'  *best' if improved else ''}"
            )
        dist_utils.barrier()
        if self.on_epoch_end is not None:
            self.on_epoch_end(row)

    def _train_and_validate(self, epoch: int) -> dict[str, Any]:
        cfg, loaders = self.config, self.parts.loaders
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        loaders.generator.manual_seed(seed)
        if loaders.sampler is not None:
            loaders.sampler.set_epoch(epoch)
        start = time.perf_counter()
        lr = self.parts.schedule(self.step)
        ema = self.ema
        train_loss, train_acc, steps = train_one_epoch(
            self.forward_model,
            loaders.train,
            self.parts.optimizer,
            self.parts.criterion,
            self.device,
            self.parts.schedule,
            self.step,
            progress=self.progress,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            mixer=self.mixer,
            precision=self.precision,
            scaler=self.scaler,
            after_step=(lambda: ema.update_parameters(self.model)) if ema is not None else None,
        )
        self.step += steps
        train_loss = dist_utils.all_reduce_mean(train_loss, self.info)
        train_acc = dist_utils.all_reduce_mean(train_acc, self.info)
        val_loss, val_acc = float("nan"), float("nan")
        if self.info.is_main and len(self.data.val):
            logits, targets = predict(self.eval_model, loaders.val, self.device)
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

    def _finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split; record it in metrics.json and best.pt."""
        best = self.run.load_best()
        model = best.build_model().to(self.device)
        logits, targets = predict(model, self.parts.loaders.test, self.device, progress=self.progress, desc="test")
        metrics = classification_metrics(targets, logits.argmax(1), self.labels, split="test")
        self.run.write_metrics(metrics)
        best.metrics = {**best.metrics, "test_acc": metrics["accuracy"]}
        self.run.save_best(best)
        log(
            f"best epoch {self.best_epoch}: val acc {self.best_val_acc:.4f}, "
            f"test acc {metrics['accuracy']:.4f} ({metrics['count']} images) -> {self.run.best}"
        )
        if self.report is not None:
            self.report(self.run.path)
        return metrics


@dataclass
class OpenRun:
    """A run about to start: its config (with `out` settled), run directory, resumed checkpoint, process."""

    config: TrainConfig
    run: RunDir
    resume: Checkpoint | None
    info: dist_utils.DistInfo


def open_run(config: TrainConfig, resume: str | Path | Checkpoint | None, kind: str) -> OpenRun:
    """Load and check the checkpoint to resume (once), settle the run directory, join the process group."""
    ckpt = None
    if resume is not None:
        ckpt = load_resumable(resume, kind)  # type: ignore[arg-type]
        check_resumable(ckpt, config)
    run = RunDir.choose(config.out, config.arch, config.data, ckpt)
    return OpenRun(replace(config, out=str(run.path)), run, ckpt, dist_utils.init_distributed(config.device))


def fit_and_leave(trainer: Trainer) -> TrainResult:
    """Fit, then leave the process group; after a good run every rank first waits for the others."""
    try:
        result = trainer.fit()
        dist_utils.finish(trainer.info)
        return result
    finally:
        trainer.ddp_model = trainer.forward_model = None  # DDP wrappers hold the process group: drop them
        dist_utils.cleanup()


PartsBuilder = Callable[[Any, DataSplits, dist_utils.DistInfo, Checkpoint | None], TrainParts]


def run_training(
    config: TrainConfig,
    resume: str | Path | Checkpoint | None,
    kind: str,
    make_data: Callable[[Any], DataSplits],
    make_parts: PartsBuilder,
    data: DataSplits | None = None,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    report: ReportHook | None = None,
) -> TrainResult:
    """Open the run, build its data and parts (`make_data`, `make_parts`), train them, leave."""
    opened = open_run(config, resume, kind)
    data = data if data is not None else make_data(opened.config)
    if opened.resume is not None:
        check_same_classes(opened.resume, data.classes)
    parts = make_parts(opened.config, data, opened.info, opened.resume)
    trainer = Trainer(opened.config, data, parts, opened.info, opened.run, progress, on_epoch_end, report)
    if opened.resume is not None:
        trainer.restore(opened.resume)
    return fit_and_leave(trainer)


def train(
    config: TrainConfig,
    resume: str | Path | Checkpoint | None = None,
    data: DataSplits | None = None,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    report: ReportHook | None = None,
) -> TrainResult:
    """Train a run described by `config` (or continue the run at `resume`) and return its result."""
    model_entry(config.arch)  # an unknown architecture fails before any data is read
    return run_training(config, resume, "train", build_data, scratch_parts, data, progress, on_epoch_end, report)
