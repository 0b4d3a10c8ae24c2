"""Turn a TrainConfig into train/val/test datasets with their preprocessing spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.preprocess import prepare_image

from ..config import TrainConfig
from .handwriting import load_handwritten_source
from .sources import (
    DATA_NAMES,
    HANDWRITTEN_DIGITS,
    ImageSource,
    load_digits_source,
    load_folder_source,
    load_shapes_source,
)
from .splits import Split, split_with_predefined, stratified_split
from .transforms import AugmentKind, EvalTransform, TrainTransform, channel_stats, fixed_size_spec, folder_spec

SPLITS = ("train", "val", "test", "all")


class ImageDataset(Dataset):
    """Images `indices` of `source`, each returned as (transform(image), target)."""

    def __init__(
        self, source: ImageSource, indices: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[i])
        return self.transform(self.source.image(index)), int(self.source.targets[index])

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[self.indices]

    @property
    def classes(self) -> list[str]:
        return self.source.classes


@dataclass
class DataSplits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    classes: list[str]
    preprocessing: Preprocessing
    description: str  # recorded in the checkpoint as `data`


def load_source(config: TrainConfig) -> ImageSource:
    if config.data == "digits":
        return load_digits_source()
    if config.data == HANDWRITTEN_DIGITS:
        return load_handwritten_source(config.data_seed)
    if config.data == "shapes":
        return load_shapes_source(config.shapes_per_class, config.data_seed)
    if config.data == "folder":
        assert config.data_dir is not None
        return load_folder_source(config.data_dir, config.on_bad_image)
    raise StriateError(f"unknown dataset {config.data!r}: choose one of {', '.join(DATA_NAMES)}")


def split_source(source: ImageSource, config: TrainConfig) -> Split:
    if source.predefined:
        return split_with_predefined(
            source.targets,
            source.predefined,
            config.val_fraction,
            config.test_fraction,
            config.data_seed,
            source.classes,
        )
    return stratified_split(source.targets, config.val_fraction, config.test_fraction, config.data_seed, source.classes)


def choose_preprocessing(config: TrainConfig, source: ImageSource, train_indices: np.ndarray) -> Preprocessing:
    """The eval preprocessing of a run: recorded in the checkpoint, then in the bundle's manifest.

    Digits and shapes are whole images resized exactly to the input size, normalised with the
    training split's own mean/std; folders of photos get the ImageNet resize/crop and statistics.
    """
    size, mode = config.resolved_input_size, config.resolved_color_mode
    if source.paths is not None:
        return folder_spec(mode, size)
    placeholder = fixed_size_spec(mode, size, (0.0,) * (1 if mode == "L" else 3), (1.0,) * (1 if mode == "L" else 3))
    mean, std = channel_stats([prepare_image(source.image(int(i)), placeholder) for i in train_indices])
    return fixed_size_spec(mode, size, mean, std)


def augment_kind(config: TrainConfig) -> AugmentKind:
    if not config.augment:
        return "none"
    # Handwritten pages are augmented when rendered; the digits' affine jitter varies them per epoch.
    return "digits" if config.data == HANDWRITTEN_DIGITS else config.data


SpecChooser = Callable[[ImageSource, np.ndarray], Preprocessing]


def build_data(config: TrainConfig, choose_spec: SpecChooser | None = None) -> DataSplits:
    """Load, split and wrap a run's data. `choose_spec(source, train_indices)` picks the eval
    preprocessing (default: `choose_preprocessing`, statistics from the training split)."""
    source = load_source(config)
    split = split_source(source, config)
    if choose_spec is None:
        spec = choose_preprocessing(config, source, split.train)
    else:
        spec = choose_spec(source, split.train)
    eval_tf = EvalTransform(spec)
    train_tf = TrainTransform(spec, augment_kind(config), config.trivial_augment, config.random_erasing)
    return DataSplits(
        train=ImageDataset(source, split.train, train_tf),
        val=ImageDataset(source, split.val, eval_tf),
        test=ImageDataset(source, split.test, eval_tf),
        classes=source.classes,
        preprocessing=spec,
        description=source.name,
    )


def build_eval_dataset(config: TrainConfig, spec: Preprocessing, split: str) -> ImageDataset:
    """One split of a run's data, preprocessed with the checkpoint's recorded spec (not recomputed)."""
    if split not in SPLITS:
        raise StriateError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    source = load_source(config)
    everything = np.arange(len(source), dtype=np.int64)
    indices = everything if split == "all" else getattr(split_source(source, config), split)
    if len(indices) == 0:
        raise StriateError(f"the {split} split of {source.name} is empty")
    return ImageDataset(source, indices, EvalTransform(spec))
