"""The training recipe's optional parts, each built from the library made for it.

- EMA: `torch.optim.swa_utils.AveragedModel` with torch's EMA update; the decay warms up as
  min(decay, (1 + n) / (10 + n)) (timm's and TF's rule), so a short run is not dominated by its
  random initialisation. BatchNorm statistics are averaged too (`use_buffers=True`).
- MixUp / CutMix: torchvision.transforms.v2 on each training batch (soft targets).
- AMP and channels_last: CUDA only; asked for on CPU, they are reported and stay off.
- torch.compile: opt-in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2 as T

from .config import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]
EMA_WARMUP = 10  # the decay is min(decay, (1 + n) / (EMA_WARMUP + n)) after n updates


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of `model` (parameters and buffers), updated with `ema.update_parameters(model)`."""

    def update(ema_params: list, model_params: list, n_averaged: torch.Tensor | int) -> None:
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (EMA_WARMUP + n)))(ema_params, model_params, n_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def make_batch_mixer(config: TrainConfig, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], Batch] | None:
    """MixUp, CutMix, or a random choice of the two per batch; None when both are off."""
    mixers: list[T.Transform] = []
    if config.mixup > 0:
        mixers.append(T.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        mixers.append(T.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else T.RandomChoice(mixers)


@dataclass(frozen=True)
class Precision:
    """How the forward runs on this device: autocast dtype (None: float32) and memory format."""

    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def choose(cls, config: TrainConfig, device: torch.device, log: Callable[[str], None]) -> Precision:
        if device.type != "cuda":
            asked = [flag for flag, on in (("--amp", config.amp), ("--channels-last", config.channels_last)) if on]
            if asked:
                log(f"note: {' and '.join(asked)} apply on CUDA only; training on {device} in float32, NCHW")
            return cls()
        dtype = None
        if config.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(dtype, config.channels_last)

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16  # bfloat16 has float32's range: no loss scaling

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=self.amp_dtype):
                yield

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms(True) inside the block when `on`; the previous setting after.

    cuBLAS needs CUBLAS_WORKSPACE_CONFIG for deterministic matmuls; it is set (unless already set)
    before the first CUDA matmul of the run, which is when cuBLAS reads it.
    """
    before = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
