"""The parts a run is made of, built before training starts: model, optimizer, loaders, schedule.

Training from scratch and fine-tuning differ only in how they build the model and the optimizer
(`training.finetune` has its own builders); loaders, schedule and loss are shared.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from striate.errors import StriateError

from . import distributed as dist_utils
from .checkpoint import Checkpoint
from .config import TrainConfig
from .data import DataSplits, ImageDataset
from .models import StriateModel, create_model

Schedule = Callable[[int], float]  # optimizer step -> learning rate


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


def warmup_cosine(config: TrainConfig, steps_per_epoch: int) -> Schedule:
    total, warmup = steps_per_epoch * config.epochs, round(steps_per_epoch * config.warmup_epochs)
    peak, low = config.lr, config.lr * config.min_lr_ratio
    return lambda step: lr_at(step, total, warmup, peak, low)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    sampler: DistributedSampler | None  # the training shard of this rank under torchrun
    generator: torch.Generator  # the training shuffle's; reseeded every epoch


def build_loaders(data: DataSplits, config: TrainConfig, info: dist_utils.DistInfo) -> Loaders:
    sampler = dist_utils.make_sampler(data.train, info, shuffle=True, seed=config.seed)
    generator = torch.Generator()

    def loader(dataset: ImageDataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler if train else None,
            num_workers=config.workers,
            pin_memory=info.device.type == "cuda",
            drop_last=False,
            generator=generator if train else None,
            persistent_workers=False,  # fresh workers each epoch, seeded from the epoch's generator
        )

    return Loaders(loader(data.train, True), loader(data.val, False), loader(data.test, False), sampler, generator)


@dataclass
class TrainParts:
    """Everything `Trainer` runs, already built."""

    model: StriateModel
    optimizer: torch.optim.Optimizer
    loaders: Loaders
    schedule: Schedule
    criterion: nn.Module


def arch_kwargs(config: TrainConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "input_size": config.resolved_input_size,
    }
    if config.base_width is not None:
        kwargs["base_width"] = config.base_width
    return kwargs


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-D parameters); frozen parameters left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]


def make_optimizer(
    groups: list[dict[str, Any]], config: TrainConfig, adamw: type = torch.optim.AdamW, sgd: type = torch.optim.SGD
) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return adamw(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return sgd(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise StriateError(f"unknown optimizer {config.optimizer!r}: choose adamw or sgd")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov) over `weight_decay_groups`."""
    return make_optimizer(weight_decay_groups(model, config.weight_decay), config)


def resumed_model(ckpt: Checkpoint) -> StriateModel:
    """The model as training left it: the raw weights when the checkpoint's own are an EMA."""
    model = ckpt.build_model()
    raw = ckpt.train_state.get("model")
    if raw is not None:
        model.load_state_dict(raw, strict=True)
    return model


def assemble(
    model: StriateModel,
    optimizer: torch.optim.Optimizer,
    data: DataSplits,
    config: TrainConfig,
    info: dist_utils.DistInfo,
) -> TrainParts:
    """The shared parts (loaders, schedule, loss) around a model and optimizer built by the caller."""
    loaders = build_loaders(data, config, info)
    schedule = warmup_cosine(config, len(loaders.train))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    return TrainParts(model, optimizer, loaders, schedule, criterion)


def scratch_parts(
    config: TrainConfig, data: DataSplits, info: dist_utils.DistInfo, resume: Checkpoint | None
) -> TrainParts:
    """A model from the zoo (initialised from `config.seed`), or the resumed one; its optimizer."""
    seed_everything(config.seed)
    if resume is not None:
        model = resumed_model(resume)
    else:
        model = create_model(config.arch, **arch_kwargs(config, len(data.classes), data.preprocessing.channels))
    return assemble(model, build_optimizer(model, config), data, config, info)
