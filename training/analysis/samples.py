"""A labelled sample of images, preprocessed exactly as the model expects (its manifest spec).

Images come from `training.data` (scikit-learn digits, generated shapes, or an ImageFolder), split
as training split them (the run config's fractions and data seed when known, else the defaults),
so `split="test"` analyses held-out images. Dataset classes are matched to the model's labels by
name (or by position when the names differ but the counts agree).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.preprocess import preprocess

from .extract import Sample, stratified_indices

SPLIT_KEYS = ("val_fraction", "test_fraction", "data_seed", "shapes_per_class")


def _map_labels(names: list[str], model_labels: list[str]) -> np.ndarray:
    """Dataset class index -> model class index."""
    lookup = {str(label): i for i, label in enumerate(model_labels)}
    if all(name in lookup for name in names):
        return np.asarray([lookup[name] for name in names], dtype=np.int64)
    if len(names) == len(model_labels):
        return np.arange(len(names), dtype=np.int64)
    raise StriateError(f"the data's classes {names[:10]} do not match the model's labels {model_labels[:10]}")


def load_sample(
    model_labels: list[str],
    spec: Preprocessing,
    data: str | None = "digits",
    data_dir: str | Path | None = None,
    n: int = 500,
    seed: int = 0,
    split: str = "test",
    run_config: dict[str, Any] | None = None,
) -> Sample:
    """A stratified sample of about `n` images of `split` ("train", "val", "test" or "all")."""
    from training.config import TrainConfig
    from training.data.datasets import load_source, split_source

    if split not in ("train", "val", "test", "all"):
        raise StriateError(f"unknown split {split!r}: choose train, val, test or all")
    name = "folder" if data_dir is not None else data
    if name not in ("digits", "shapes", "folder"):
        raise StriateError(f"unknown dataset {data!r}: use digits, shapes or --data-dir DIR")
    known = {k: v for k, v in (run_config or {}).items() if k in SPLIT_KEYS}
    config = TrainConfig.from_dict(
        {**known, "data": name, "on_bad_image": "skip", "data_dir": str(data_dir) if data_dir is not None else None}
    )
    source = load_source(config)
    indices = np.arange(len(source)) if split == "all" else getattr(split_source(source, config), split)
    if len(indices) == 0:
        raise StriateError(f"the {split} split of {source.name} is empty")
    to_model = _map_labels(list(source.classes), list(model_labels))
    y_all = to_model[source.targets[indices]]
    keep = stratified_indices(y_all, n, seed)
    chosen = indices[keep]
    x = np.stack([preprocess(source.image(int(i)), spec) for i in chosen]).astype(np.float32)
    return Sample(x=x, y=y_all[keep], labels=list(model_labels), index=chosen)
