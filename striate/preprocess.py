"""Image decoding and the manifest's preprocessing, in Pillow and NumPy only.

Training's eval transform and the service both call `preprocess`, so the tensor a bundle sees in
production is, bit for bit, the tensor it was evaluated on. No torch here: the service imports it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from striate.errors import StriateError
from striate.manifest import Preprocessing

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

DEFAULT_MAX_PIXELS = 40_000_000
# File suffixes read as images wherever a folder is scanned (training data, bulk embeddings).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# `decode_image` enforces its own pixel limit before decoding; Pillow's warning (process-wide, and
# `warnings.catch_warnings` is not thread-safe) would only add noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why (safe to show a client)."""


IMAGENET_RESIZE_RATIO = 256 / 224  # ImageNet evaluation: shorter side to crop x 256/224, then centre crop


def imagenet_preprocessing(crop: int = 224) -> Preprocessing:
    """ImageNet evaluation as torchvision's weights do it: RGB, shorter side resized to
    crop x 256/224, centre crop, ImageNet mean/std."""
    from striate.normalization import IMAGENET_MEAN, IMAGENET_STD

    side = round(crop * IMAGENET_RESIZE_RATIO)
    return Preprocessing(
        color_mode="RGB",
        resize_mode="shorter",
        resize_size=(side, side),
        crop_size=(crop, crop),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes into a fully loaded Pillow image with EXIF orientation applied.

    Refuses empty input, non-images, truncated files and images over `max_pixels` (decompression
    bombs) with an `ImageDecodeError` naming the problem.
    """
    if not data:
        raise ImageDecodeError("empty image body")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size  # read from the header: nothing is decoded yet
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
            )
        img.load()
        return ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:  # truncated/corrupt data or EXIF
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None


def to_color_mode(img: Image.Image, color_mode: str) -> Image.Image:
    """Convert any Pillow mode (palette, RGBA, 16-bit, float, CMYK...) to "L" or "RGB".

    16-bit and 32-bit integer images are scaled to 8 bits by their type's range; float images are
    taken to lie in [0, 1]. Transparency is dropped (as Pillow's own conversion does).
    """
    if img.mode == color_mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            arr = arr * 255.0
        elif img.mode.startswith("I;16") or arr.max(initial=0) <= 65535:
            arr = arr / 257.0
        else:
            arr = arr / 16843009.0  # 2**32-1 / 255
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return img if color_mode == "L" else img.convert(color_mode)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(color_mode)


def _center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Centre crop with the same rounding as torchvision's `center_crop` (pads if too small)."""
    img_w, img_h = img.size
    if width > img_w or height > img_h:
        padded = Image.new(img.mode, (max(width, img_w), max(height, img_h)))
        padded.paste(img, ((padded.width - img_w) // 2, (padded.height - img_h) // 2))
        img, (img_w, img_h) = padded, padded.size
    top = round((img_h - height) / 2.0)
    left = round((img_w - width) / 2.0)
    return img.crop((left, top, left + width, top + height))


def resize_and_crop(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """Steps 2 and 3 of the manifest's preprocessing: resize, then centre crop."""
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize_mode == "exact":
        size_h, size_w = spec.resize_size
    else:
        shorter = spec.resize_size[0]
        w, h = img.size
        if w <= h:
            size_w, size_h = shorter, int(shorter * h / w)
        else:
            size_h, size_w = shorter, int(shorter * w / h)
    if img.size != (size_w, size_h):
        img = img.resize((size_w, size_h), resample=resample)
    crop_h, crop_w = spec.crop_size
    if img.size != (crop_w, crop_h):
        img = _center_crop(img, crop_h, crop_w)
    return img


def normalize(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """Step 4: uint8 HWC -> float32 CHW, scaled to [0, 1], minus mean, over std."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def prepare_image(img: Image.Image, spec: Preprocessing) -> Image.Image:
    """Colour mode, resize and crop: the image the model sees, before normalisation."""
    return resize_and_crop(to_color_mode(img, spec.color_mode), spec)


def preprocess(img: Image.Image, spec: Preprocessing) -> np.ndarray:
    """The manifest's full preprocessing: a decoded image -> float32 [C, H, W]."""
    return normalize(prepare_image(img, spec), spec)


def find_images(root: str | Path) -> tuple[Path, list[Path]]:
    """(root, every image file under it, sorted), hidden files and folders skipped; a StriateError
    when the folder is missing or holds no image."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise StriateError(f"data folder not found or not a directory: {root}")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise StriateError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return root, paths
