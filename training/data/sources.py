"""Where images come from: scikit-learn's digits (plain or as handwriting on paper, see
`handwriting.py`), generated shapes, or an ImageFolder directory.

A source is a list of images with integer targets and class names; it knows nothing about
splits, tensors or augmentation. Sources are plain picklable objects so DataLoader workers can
receive them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from striate.errors import StriateError
from striate.preprocess import IMAGE_EXTENSIONS as IMG_EXTENSIONS
from striate.preprocess import ImageDecodeError, decode_image

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SHAPE_CLASSES = ("circle", "square", "triangle")
HANDWRITTEN_DIGITS = "digits-handwritten"  # scikit-learn's and font digits on paper (training.data.handwriting)
# Every --data name the training commands accept, stated once.
DATA_NAMES = ("digits", HANDWRITTEN_DIGITS, "shapes", "folder")


@dataclass
class ImageSource:
    """Images held in memory (uint8 arrays) or on disk (paths), with integer targets."""

    name: str  # what the data was, for the checkpoint and manifest ("digits", "folder:/abs/dir"...)
    classes: list[str]
    targets: np.ndarray  # int64 [N]
    arrays: np.ndarray | None = None  # uint8 [N, H, W] ("L") or [N, H, W, 3] ("RGB")
    paths: list[str] | None = None
    # Predefined split of a folder with train/ (val/) (test/) sub-folders: split name -> indices.
    predefined: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index])
        assert self.paths is not None
        path = self.paths[index]
        try:
            return decode_image(Path(path).read_bytes())
        except (OSError, ImageDecodeError) as exc:  # changed on disk since the scan
            raise StriateError(f"cannot read image {path}: {exc}") from None


def digits_to_images(images: np.ndarray) -> np.ndarray:
    """scikit-learn's 8x8 digits (0..16 floats) -> 8-bit grayscale: value * 255 / 16, rounded."""
    return np.rint(np.asarray(images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)


def load_digits_source() -> ImageSource:
    """The 1,797 8x8 digits bundled with scikit-learn (no download), labels "0".."9"."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return ImageSource(
        name="digits",
        classes=[str(c) for c in range(10)],
        targets=np.asarray(bunch.target, dtype=np.int64),
        arrays=digits_to_images(bunch.images),
    )


def draw_shape(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One RGB image of a filled circle, square or triangle at a random place, size and colour."""
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    foreground = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (size, size), background)
    radius = float(rng.uniform(0.2, 0.4)) * size
    cx, cy = (float(v) for v in rng.uniform(radius, size - radius, 2))
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=foreground)
    else:
        sides = {"square": 4, "triangle": 3}[kind]
        draw.regular_polygon((cx, cy, radius), sides, rotation=float(rng.uniform(0, 360)), fill=foreground)
    return np.asarray(img, dtype=np.uint8)


def load_shapes_source(per_class: int = 200, seed: int = 0, size: int = 64) -> ImageSource:
    """A generated, seed-deterministic RGB dataset of circles, squares and triangles."""
    rng = np.random.default_rng(seed)
    arrays, targets = [], []
    for _ in range(per_class):
        for target, kind in enumerate(SHAPE_CLASSES):
            arrays.append(draw_shape(kind, rng, size))
            targets.append(target)
    return ImageSource(
        name=f"shapes(per_class={per_class},seed={seed})",
        classes=list(SHAPE_CLASSES),
        targets=np.asarray(targets, dtype=np.int64),
        arrays=np.stack(arrays),
    )


# --------------------------------------------------------------------------------------------
# ImageFolder


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
    )


def _check_image(path: Path) -> str | None:
    """Decode fully once; None when fine, else the reason it is unusable."""
    try:
        decode_image(path.read_bytes())
    except (OSError, ImageDecodeError) as exc:
        return str(exc)
    return None


def _scan_classes(root: Path, classes: list[str] | None = None) -> dict[str, list[Path]]:
    """class name -> image files under root/<class>/ (recursively), refusing empty class folders."""
    class_dirs = _visible_dirs(root)
    if not class_dirs:
        raise StriateError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    found: dict[str, list[Path]] = {}
    for class_dir in class_dirs:
        if classes is not None and class_dir.name not in classes:
            raise StriateError(f"class folder {class_dir} is not among the training classes {classes}")
        files = _image_files(class_dir)
        if not files:
            raise StriateError(f"class folder {class_dir} has no images ({', '.join(IMG_EXTENSIONS)})")
        found[class_dir.name] = files
    return found


def _drop_bad_images(
    files: dict[str, list[Path]], on_bad_image: str, warn: Callable[[str], None]
) -> dict[str, list[Path]]:
    flat = [p for paths in files.values() for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
        problems = dict(zip(flat, pool.map(_check_image, flat), strict=True))
    kept: dict[str, list[Path]] = {}
    for name, paths in files.items():
        for path in paths:
            if problems[path] is None:
                continue
            if on_bad_image == "fail":
                raise StriateError(
                    f"corrupt image {path}: {problems[path]} (use --on-bad-image skip to skip such images)"
                )
            warn(f"skipping corrupt image {path}: {problems[path]}")
        kept[name] = [p for p in paths if problems[p] is None]
        if not kept[name]:
            raise StriateError(f"class folder {paths[0].parent} has no readable images")
    return kept


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_folder_source(
    root: str | Path, on_bad_image: str = "fail", warn: Callable[[str], None] = _warn
) -> ImageSource:
    """An ImageFolder directory: root/<class>/<image>, or root/{train,val,test}/<class>/<image>.

    Every image is decoded once up front, so a corrupt file is reported by path before training
    starts and either fails the run or is skipped (`on_bad_image`), never halfway through an epoch.
    """
    if on_bad_image not in ("skip", "fail"):
        raise StriateError(f"--on-bad-image must be skip or fail, not {on_bad_image!r}")
    root = Path(root).expanduser()
    if not root.exists():
        raise StriateError(f"data folder not found: {root}")
    if not root.is_dir():
        raise StriateError(f"data folder is not a directory: {root}")
    subdirs = [d.name for d in _visible_dirs(root)]
    split_layout = bool(subdirs) and "train" in subdirs and all(d.lower() in SPLIT_DIRS for d in subdirs)

    if not split_layout:
        files = _drop_bad_images(_scan_classes(root), on_bad_image, warn)
        per_split = {"all": files}
    else:
        per_split = {"train": _drop_bad_images(_scan_classes(root / "train"), on_bad_image, warn)}
        for d in subdirs:
            split = SPLIT_DIRS[d.lower()]
            if split != "train":
                per_split[split] = _drop_bad_images(
                    _scan_classes(root / d, list(per_split["train"])), on_bad_image, warn
                )
    classes = sorted(per_split["all" if "all" in per_split else "train"])
    if len(classes) < 2:
        raise StriateError(f"data folder {root} has only {len(classes)} class; a classifier needs 2 or more")

    paths: list[str] = []
    targets: list[int] = []
    predefined: dict[str, np.ndarray] = {}
    for split, files in per_split.items():
        start = len(paths)
        for name, class_files in files.items():
            paths += [str(p) for p in class_files]
            targets += [classes.index(name)] * len(class_files)
        if split != "all":
            predefined[split] = np.arange(start, len(paths), dtype=np.int64)
    return ImageSource(
        name=f"folder:{root.resolve()}",
        classes=classes,
        targets=np.asarray(targets, dtype=np.int64),
        paths=paths,
        predefined=predefined,
    )
