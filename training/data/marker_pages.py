"""A second way to render held-out digits, written apart from training's renderer.

`handwriting.render_page` made every page the default model trained on. Pages from the same
renderer, even from unseen digits and another seed, can share its quirks, so the held-out
measurement also reads pages made differently: each scikit-learn test digit is blown up with
Lanczos, blurred and thresholded into a solid marker stroke (thinned or thickened), rotated up to
15 degrees, scaled to a third of the frame up to all of it at a random place on a 48, 100 or 160
pixel page of flat white or grey paper with sensor noise, and inverted for light on dark. No
supersampling, shading ramp, blur of the page or JPEG round trip (what training's renderer does).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

PAGE_SIDES = (48, 100, 160)
MAX_ROTATION = 15.0


def _marker_stroke(digit8: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An 8x8 uint8 digit as a binary 64x64 stroke of a random width."""
    smooth = Image.fromarray(digit8).resize((64, 64), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(2))
    stroke = Image.fromarray(((np.asarray(smooth) / 255.0 > rng.uniform(0.25, 0.55)) * 255).astype(np.uint8))
    width = rng.integers(-1, 2)
    if width < 0:
        stroke = stroke.filter(ImageFilter.MinFilter(3))
    elif width > 0:
        stroke = stroke.filter(ImageFilter.MaxFilter(5))
    return stroke


def marker_page(digit8: np.ndarray, rng: np.random.Generator, light_on_dark: bool) -> np.ndarray:
    """One uint8 page (side from PAGE_SIDES) showing `digit8` written with a marker."""
    stroke = _marker_stroke(digit8, rng).rotate(
        rng.uniform(-MAX_ROTATION, MAX_ROTATION), resample=Image.Resampling.BICUBIC, expand=True
    )
    box = stroke.getbbox()
    stroke = stroke.crop(box) if box else stroke
    side = int(rng.choice(PAGE_SIDES))
    scale = min(rng.uniform(1 / 3, 0.98) * side / stroke.height, 0.98 * side / stroke.width)
    stroke = stroke.resize(
        (max(1, int(stroke.width * scale)), max(1, int(stroke.height * scale))), Image.Resampling.LANCZOS
    )
    ink = np.zeros((side, side), np.float32)
    top, left = rng.integers(0, side - stroke.height + 1), rng.integers(0, side - stroke.width + 1)
    ink[top : top + stroke.height, left : left + stroke.width] = np.asarray(stroke, np.float32) / 255.0
    paper = rng.uniform(0.5, 1.0) if rng.random() < 0.5 else rng.uniform(0.85, 1.0)
    page = paper * (1 - ink) + rng.uniform(0.0, 0.3) * ink
    page += rng.normal(0.0, rng.uniform(0.0, 0.06), page.shape)
    if light_on_dark:
        page = 1.0 - page
    return (np.clip(page, 0.0, 1.0) * 255).astype(np.uint8)


def marker_pages(
    digits8: np.ndarray, copies: int, seed: int, light_on_dark: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """`copies` pages of each digit (uint8 8x8 arrays), in one polarity; returns (pages, digit index)."""
    rng = np.random.default_rng([seed, 4242, int(light_on_dark)])
    pages = [marker_page(d, rng, light_on_dark) for d in digits8 for _ in range(copies)]
    return pages, np.repeat(np.arange(len(digits8)), copies)
