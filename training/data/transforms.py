"""The eval transform (exactly the manifest's preprocessing) and the train augmentations.

Evaluation uses `striate.preprocess.preprocess`, the very function the service runs, so the
tensors a bundle is evaluated on are the tensors it sees in production. Training augments the
image (Pillow, torchvision v2 ops drawing from torch's RNG) and then normalises it the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from striate.manifest import Preprocessing
from striate.normalization import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, IMAGENET_MEAN, IMAGENET_STD
from striate.preprocess import normalize, preprocess, resize_and_crop, to_color_mode

AugmentKind = Literal["digits", "shapes", "folder", "none"]

FOLDER_CROP_RATIO = 0.875  # resize the shorter side to size / 0.875, then centre-crop (ImageNet eval)

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class EvalTransform:
    """PIL image -> float32 [C, H, W] tensor through the manifest's preprocessing, nothing else."""

    def __init__(self, spec: Preprocessing) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess(img, self.spec))


class TrainTransform:
    """Augment, then normalise with the same mean/std as evaluation.

    - digits: small affine jitter (rotation, shift, scale) of the resized image; never flipped,
      since a mirrored 2 or 7 is not a digit;
    - shapes: the same jitter plus horizontal and vertical flips (shapes are symmetric classes);
    - folder: RandomResizedCrop to the crop size and horizontal flip (the torchvision recipe);
    - none: the eval preprocessing.

    Recipe options on top: `trivial_augment` applies TrivialAugmentWide (one random photometric or
    geometric op of random strength) after the kind's augmentation; `random_erasing` is the
    probability of erasing a rectangle of the normalised tensor (torchvision's RandomErasing).
    """

    def __init__(
        self, spec: Preprocessing, kind: AugmentKind, trivial_augment: bool = False, random_erasing: float = 0.0
    ) -> None:
        self.spec = spec
        self.kind = kind
        interpolation = _INTERPOLATION[spec.interpolation]
        self.trivial = T.TrivialAugmentWide(interpolation=interpolation) if trivial_augment else None
        self.erase = T.RandomErasing(p=random_erasing, value=0) if random_erasing > 0 else None
        affine = T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=interpolation)
        if kind == "digits":
            self.augment: T.Transform | None = affine
        elif kind == "shapes":
            self.augment = T.Compose([affine, T.RandomHorizontalFlip(), T.RandomVerticalFlip()])
        elif kind == "folder":
            self.augment = T.Compose(
                [
                    T.RandomResizedCrop(spec.crop_size, scale=(0.25, 1.0), interpolation=interpolation),
                    T.RandomHorizontalFlip(),
                ]
            )
        else:
            self.augment = None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = to_color_mode(img, self.spec.color_mode)
        if self.kind != "folder":  # folder crops come from RandomResizedCrop on the full image
            img = resize_and_crop(img, self.spec)
        if self.augment is not None:
            img = self.augment(img)
        if self.trivial is not None:
            img = self.trivial(img)
        tensor = torch.from_numpy(normalize(img, self.spec))
        return self.erase(tensor) if self.erase is not None else tensor


def fixed_size_spec(color_mode: str, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocessing:
    """Whole-image datasets (digits, shapes): resize exactly to size x size, no crop."""
    return Preprocessing(
        color_mode=color_mode,
        resize_mode="exact",
        resize_size=(size, size),
        crop_size=(size, size),
        interpolation="bilinear",
        mean=mean,
        std=std,
    )


def folder_spec(color_mode: str, size: int) -> Preprocessing:
    """Photos: shorter side to size / 0.875, centre crop size x size, ImageNet mean/std."""
    resize = round(size / FOLDER_CROP_RATIO)
    rgb = color_mode == "RGB"
    return Preprocessing(
        color_mode=color_mode,
        resize_mode="shorter",
        resize_size=(resize, resize),
        crop_size=(size, size),
        interpolation="bilinear",
        mean=IMAGENET_MEAN if rgb else IMAGENET_GRAY_MEAN,
        std=IMAGENET_STD if rgb else IMAGENET_GRAY_STD,
    )


def channel_stats(images: list[Image.Image]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of [0, 1]-scaled pixels, rounded to 4 decimals for the manifest."""
    stack = np.stack([np.asarray(img, dtype=np.float64) / 255.0 for img in images])
    if stack.ndim == 3:
        stack = stack[..., None]
    pixels = stack.reshape(-1, stack.shape[-1])
    mean = tuple(round(float(v), 4) for v in pixels.mean(axis=0))
    std = tuple(round(max(float(v), 1e-3), 4) for v in pixels.std(axis=0))
    return mean, std
