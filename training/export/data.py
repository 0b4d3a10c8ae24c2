"""Labelled images from a checkpoint's own data, for INT8 calibration and held-out accuracy."""

from __future__ import annotations

import numpy as np

from striate.errors import StriateError
from training.checkpoint import Checkpoint


def checkpoint_split(ckpt: Checkpoint, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, C, H, W], targets int64 [N]) of one split, through the checkpoint's spec.

    `limit` keeps an evenly spaced subset (deterministic, every class represented when sorted by index).
    """
    from training.config import TrainConfig
    from training.data import build_eval_dataset

    if not ckpt.config or "data" not in ckpt.config:
        raise StriateError(
            "the checkpoint does not record the data it was trained on, so there are no images to "
            "calibrate or evaluate INT8 with"
        )
    try:
        config = TrainConfig.from_dict(ckpt.config)
    except (TypeError, ValueError) as exc:
        raise StriateError(f"cannot rebuild the checkpoint's data config: {exc}") from None
    dataset = build_eval_dataset(config, ckpt.preprocessing, split)
    positions = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        positions = np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(np.int64))
    images, targets = zip(*(dataset[int(i)] for i in positions), strict=True)
    return np.stack([t.numpy() for t in images]).astype(np.float32), np.asarray(targets, dtype=np.int64)
