"""Datasets for training and evaluation: sources, stratified splits, transforms."""

from .datasets import DataSplits, ImageDataset, build_data, build_eval_dataset, choose_preprocessing, load_source
from .sources import (
    SHAPE_CLASSES,
    ImageSource,
    digits_to_images,
    load_digits_source,
    load_folder_source,
    load_shapes_source,
)
from .splits import Split, stratified_split
from .transforms import EvalTransform, TrainTransform

__all__ = [
    "SHAPE_CLASSES",
    "DataSplits",
    "EvalTransform",
    "ImageDataset",
    "ImageSource",
    "Split",
    "TrainTransform",
    "build_data",
    "build_eval_dataset",
    "choose_preprocessing",
    "digits_to_images",
    "load_digits_source",
    "load_folder_source",
    "load_shapes_source",
    "load_source",
    "stratified_split",
]
