"""Real images for parity checks: scikit-learn's digits and scikit-image's sample photos.

They pass through the manifest's own preprocessing, so the check sees what the service will send.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from striate.manifest import Preprocessing
from striate.preprocess import preprocess

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "moon", "page")
DESCRIPTION = "scikit-learn digits and scikit-image sample photos"


def digit_image(values: np.ndarray) -> Image.Image:
    """An 8x8 digits array (0..16) as an 8-bit "L" image (value * 255 / 16, rounded)."""
    return Image.fromarray(np.rint(np.asarray(values, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8), "L")


def real_images(n: int) -> list[Image.Image]:
    """n real images, alternating photos and digits, always the same ones."""
    from skimage import data as skdata
    from sklearn.datasets import load_digits

    digits = load_digits().images
    photos = [Image.fromarray(getattr(skdata, name)()) for name in PHOTOS]
    out: list[Image.Image] = []
    for i in range(n):
        out.append(photos[(i // 2) % len(photos)] if i % 2 == 0 else digit_image(digits[(i // 2) * 37 % len(digits)]))
    return out


def real_batch(spec: Preprocessing, n: int) -> np.ndarray:
    """float32 [n, C, H, W] after the manifest's preprocessing."""
    return np.stack([preprocess(img, spec) for img in real_images(n)])
