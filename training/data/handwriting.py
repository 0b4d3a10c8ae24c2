"""Digits as people write them: scikit-learn's handwritten digits and font digits put on paper.

scikit-learn's 8x8 digits are light strokes on a black, noiseless, full frame. A person's photo or
drawing is dark ink on white or grey paper (or chalk on a board), noisy, anywhere from a third of
the frame to all of it, off-centre, slightly rotated, thin or thick. This module renders a digit
shape (a [0, 1] ink mask) onto such a page, so a model trained on it reads both.

Two kinds of shapes feed the renderer:
- scikit-learn's digits, upsampled and re-thresholded so the stroke width varies;
- digits typed in the TrueType fonts matplotlib ships (DejaVu, Computer Modern, STIX), which add
  the crisp, thin shapes of a pen or a drawn canvas that 8x8 scans lack.

The source `digits-handwritten` keeps scikit-learn's train/val/test split (stratified, seed
`data_seed`) *per source digit*: every rendering of a test digit is in the test split, so the test
accuracy measures digits the model never saw in any form. Fonts only feed the training split.
`held_out_set` renders a separate evaluation set from the test split's digits alone, with its own
seed, for `bench/handwriting_accuracy.py` and the tests of the committed default bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .sources import HANDWRITTEN_DIGITS, ImageSource, digits_to_images, load_digits_source
from .splits import stratified_split

SIZE = 32  # rendered side; the default model's input size, so training resizes nothing
SUPERSAMPLE = 3  # draw at 3x and reduce: smooth edges, as a camera or a downscaled canvas gives
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
)


@dataclass(frozen=True)
class PageStyle:
    """The ranges a page is drawn from; every rendering draws its own values inside them."""

    min_height: float = 0.33  # digit height as a fraction of the frame
    max_height: float = 1.0
    max_rotation: float = 15.0  # degrees, either way
    paper: tuple[float, float] = (0.55, 1.0)  # paper brightness (dark-on-light pages)
    ink: tuple[float, float] = (0.0, 0.35)  # ink brightness
    max_noise: float = 0.08  # std of additive Gaussian pixel noise
    max_blur: float = 1.2  # Gaussian blur radius at the output scale (defocus, motion)
    max_shading: float = 0.25  # brightness ramp across the page (uneven light on a photo)
    jpeg_chance: float = 0.3  # how often the page goes through a lossy JPEG round trip


DEFAULT_STYLE = PageStyle()


def sklearn_glyph(image8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 scikit-learn digit (uint8, light on dark) -> a [0, 1] ink mask with a random stroke width.

    Upsampled smoothly, then re-thresholded: a low threshold keeps the blurry halo (thick strokes),
    a high one keeps only the core (thin strokes).
    """
    big = Image.fromarray(image8).resize((8 * 6, 8 * 6), Image.Resampling.BICUBIC)
    values = np.asarray(big, dtype=np.float32) / 255.0
    threshold = float(rng.uniform(0.2, 0.6))
    softness = float(rng.uniform(0.05, 0.2))
    return np.clip((values - threshold) / softness + 0.5, 0.0, 1.0)


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def font_glyph(digit: int, font_name: str, rng: np.random.Generator) -> np.ndarray:
    """A digit typed in a font -> a [0, 1] ink mask, strokes thinned or thickened at random."""
    font = _font(font_name, 64)
    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text((48, 48), str(digit), fill=255, font=font, anchor="mm")
    change = int(rng.integers(-1, 3))  # -1: thinner, 0: as typed, 1..2: bolder
    if change < 0:
        canvas = canvas.filter(ImageFilter.MinFilter(3))
    for _ in range(max(change, 0)):
        canvas = canvas.filter(ImageFilter.MaxFilter(5))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _crop_to_ink(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.max(axis=1) > 0.1)
    cols = np.flatnonzero(mask.max(axis=0) > 0.1)
    if len(rows) == 0 or len(cols) == 0:
        return mask
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place(mask: np.ndarray, rng: np.random.Generator, style: PageStyle, side: int) -> np.ndarray:
    """Rotate, scale (height a fraction of the frame) and put the mask somewhere inside a side x side frame."""
    angle = float(rng.uniform(-style.max_rotation, style.max_rotation))
    rotated = Image.fromarray((mask * 255).astype(np.uint8)).rotate(
        angle, resample=Image.Resampling.BILINEAR, expand=True
    )
    glyph = _crop_to_ink(np.asarray(rotated, dtype=np.float32) / 255.0)
    h, w = glyph.shape
    height = float(rng.uniform(style.min_height, style.max_height)) * side
    scale = min(height / h, side / w)  # a wide glyph is limited by the frame's width
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    glyph_img = Image.fromarray((glyph * 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(rng.integers(0, side - new_h + 1))
    left = int(rng.integers(0, side - new_w + 1))
    frame = np.zeros((side, side), dtype=np.float32)
    frame[top : top + new_h, left : left + new_w] = np.asarray(glyph_img, dtype=np.float32) / 255.0
    return frame


def render_page(
    mask: np.ndarray,
    rng: np.random.Generator,
    light_on_dark: bool,
    style: PageStyle = DEFAULT_STYLE,
    size: int = SIZE,
) -> np.ndarray:
    """One [0, 1] ink mask -> a size x size uint8 photo or drawing of it on paper (or a board)."""
    big = size * SUPERSAMPLE
    ink_mask = _place(mask, rng, style, big)
    paper = float(rng.uniform(*style.paper))
    ink = float(rng.uniform(*style.ink))
    # Uneven light: a linear ramp in a random direction, as a phone photo of a page has.
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big - 0.5
    theta = float(rng.uniform(0, 2 * np.pi))
    shading = float(rng.uniform(0, style.max_shading)) * (np.cos(theta) * xx + np.sin(theta) * yy)
    page = (paper + shading) * (1 - ink_mask) + ink * ink_mask
    if light_on_dark:
        page = 1.0 - page
    img = Image.fromarray((np.clip(page, 0, 1) * 255).astype(np.uint8))
    img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    blur = float(rng.uniform(0, style.max_blur)) * size / SIZE if rng.random() < 0.6 else 0.0
    if blur > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(img, dtype=np.float32) / 255.0
    noisy = noisy + rng.normal(0, float(rng.uniform(0, style.max_noise)), noisy.shape)
    out = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    if rng.random() < style.jpeg_chance:
        out = _jpeg_round_trip(out, int(rng.integers(30, 90)))
    return out


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("L"), dtype=np.uint8)


def _render_many(
    digits8: np.ndarray, targets: np.ndarray, copies: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int]]:
    """`copies` pages per scikit-learn digit, alternating polarity so each is exactly half."""
    arrays, labels = [], []
    for image8, target in zip(digits8, targets, strict=True):
        for copy in range(copies):
            arrays.append(render_page(sklearn_glyph(image8, rng), rng, light_on_dark=copy % 2 == 1))
            labels.append(int(target))
    return arrays, labels


def _plain(digits8: np.ndarray) -> np.ndarray:
    """scikit-learn's own look (light on black, full frame), resized to SIZE: kept in every split."""
    return np.stack([np.asarray(Image.fromarray(d).resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for d in digits8])


def load_handwritten_source(seed: int = 0, copies: int = 12, font_copies: int = 24) -> ImageSource:
    """The `digits-handwritten` training source: scikit-learn's split kept per source digit.

    train: each train digit as it is plus `copies` pages, and `font_copies` pages per font and digit;
    val / test: each val / test digit as it is plus `copies` pages (fonts never leave training).
    """
    digits = load_digits_source()
    assert digits.arrays is not None
    split = stratified_split(digits.targets, 0.1, 0.2, seed, digits.classes)
    rng = np.random.default_rng([seed, 2026])  # the pages' own stream, apart from the split's
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    predefined: dict[str, np.ndarray] = {}
    for name, indices in (("train", split.train), ("val", split.val), ("test", split.test)):
        start = len(labels)
        arrays += list(_plain(digits.arrays[indices]))
        labels += [int(t) for t in digits.targets[indices]]
        pages, page_labels = _render_many(digits.arrays[indices], digits.targets[indices], copies, rng)
        arrays += pages
        labels += page_labels
        if name == "train":
            for font_name in FONT_FILES:
                for digit in range(10):
                    for copy in range(font_copies):
                        glyph = font_glyph(digit, font_name, rng)
                        arrays.append(render_page(glyph, rng, light_on_dark=copy % 2 == 1))
                        labels.append(digit)
        predefined[name] = np.arange(start, len(labels), dtype=np.int64)
    return ImageSource(
        name=f"{HANDWRITTEN_DIGITS}(seed={seed},copies={copies},font_copies={font_copies})",
        classes=digits.classes,
        targets=np.asarray(labels, dtype=np.int64),
        arrays=np.stack(arrays),
        predefined=predefined,
    )


@dataclass
class HeldOutSet:
    """Pages rendered from scikit-learn's test-split digits only, with their own seed."""

    images: np.ndarray  # uint8 [N, SIZE, SIZE]
    targets: np.ndarray  # int64 [N]
    light_on_dark: np.ndarray  # bool [N]
    sklearn_test: np.ndarray  # uint8 [M, 8, 8]: the test split's digits as scikit-learn ships them
    sklearn_test_targets: np.ndarray  # int64 [M]


def held_out_set(seed: int = 7919, copies: int = 4, split_seed: int = 0) -> HeldOutSet:
    """An evaluation set no training run saw: the test digits of the split made with `split_seed`
    (the training run's --data-seed), rendered with a generator seeded apart from training's."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    targets = np.asarray(bunch.target, dtype=np.int64)
    test = stratified_split(targets, 0.1, 0.2, split_seed).test
    digits8 = digits_to_images(bunch.images)[test]
    rng = np.random.default_rng([seed, 31337])
    pages, labels = _render_many(digits8, targets[test], copies, rng)
    polarity = np.tile(np.arange(copies) % 2 == 1, len(test))
    return HeldOutSet(
        images=np.stack(pages),
        targets=np.asarray(labels, dtype=np.int64),
        light_on_dark=polarity,
        sklearn_test=digits8,
        sklearn_test_targets=targets[test],
    )
