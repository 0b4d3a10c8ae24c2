"""Regenerate the sample inputs in samples/ (the page's clickable samples and the README's curl lines).

    python scripts/make_samples.py

Digits: pen strokes drawn as on the page's canvas or on paper, in both polarities, a photographed
page, and one of scikit-learn's own 8x8 scans; photos: a few of scikit-image's bundled images,
downsized. Deterministic (fixed seeds), so rerunning it rewrites the same files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.data.handwriting import render_page, sklearn_glyph
from training.data.sources import digits_to_images

SAMPLES = Path(__file__).resolve().parents[1] / "service" / "static" / "samples"


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> list:
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(start, end, n)
    ]


# Pen strokes in a unit box (y down), as a person would draw each digit.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    2: [[*_arc(0.5, 0.3, 0.28, 0.2, 200, 370), (0.22, 0.9), (0.82, 0.9)]],
    3: [_arc(0.48, 0.28, 0.26, 0.2, 210, 450) + _arc(0.48, 0.7, 0.3, 0.22, 270, 510)],
    4: [[(0.62, 0.08), (0.15, 0.66), (0.88, 0.66)], [(0.64, 0.35), (0.64, 0.95)]],
    7: [[(0.15, 0.12), (0.85, 0.12), (0.42, 0.92)]],
}


def drawn_digit(digit: int, size: int, width: int, ink: int, paper: int, tilt: float = 0.0) -> Image.Image:
    """A digit drawn with a round pen of `width` pixels, like the page's canvas or a marker on paper."""
    img = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(img)
    margin = size * 0.15
    scale = size - 2 * margin
    for stroke in STROKES[digit]:
        points = [(margin + x * scale, margin + y * scale) for x, y in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=ink)
    return img.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=paper)


def paper_photo(img: Image.Image, seed: int) -> Image.Image:
    """Grey paper, uneven light, sensor noise and a little blur: a phone photo of a drawn digit."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    h, w = pixels.shape
    ramp = np.linspace(-18, 18, w)[None, :] + np.linspace(-10, 10, h)[:, None]
    pixels = pixels * 0.82 + ramp + rng.normal(0, 7, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> None:
    from skimage import data
    from sklearn.datasets import load_digits

    SAMPLES.mkdir(parents=True, exist_ok=True)
    index: list[dict] = []

    def add(img: Image.Image, name: str, title: str, kind: str, label: str | None) -> None:
        path = SAMPLES / name
        if name.endswith(".jpg"):
            img.save(path, quality=85, optimize=True)
        else:
            img.save(path, optimize=True)
        index.append({"file": name, "title": title, "kind": kind, "label": label})

    add(drawn_digit(3, 140, 12, 20, 250), "digit-3-dark-on-light.png", "3, pen on white", "digit", "3")
    add(drawn_digit(7, 140, 14, 245, 10, tilt=-8), "digit-7-light-on-dark.png", "7, chalk on black", "digit", "7")
    add(paper_photo(drawn_digit(4, 160, 9, 40, 205, tilt=6), 4), "digit-4-photo.jpg", "4, photo of paper", "digit", "4")
    add(drawn_digit(2, 140, 20, 235, 60), "digit-2-thick-light-on-grey.png", "2, thick, light on grey", "digit", "2")
    # scikit-learn's digits: one as it ships (8x8, light on dark), one rendered on grey paper.
    bunch = load_digits()
    eight = digits_to_images(bunch.images)
    add(Image.fromarray(eight[46]), "digit-5-sklearn-8x8.png", "5, scikit-learn 8x8", "digit", str(bunch.target[46]))
    rng = np.random.default_rng(1)
    page = render_page(sklearn_glyph(eight[16], rng), rng, light_on_dark=False, size=96)
    add(Image.fromarray(page), "digit-6-on-paper.png", "6, scan on grey paper", "digit", str(bunch.target[16]))
    photos = {"cat": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(), "rocket": data.rocket()}
    for name, pixels in photos.items():
        img = Image.fromarray(pixels)
        img.thumbnail((320, 320), Image.Resampling.LANCZOS)
        add(img, f"photo-{name}.jpg", f"{name} (scikit-image)", "photo", None)
    (SAMPLES / "index.json").write_text(json.dumps({"samples": index}, indent=2) + "\n", encoding="utf-8")
    for item in index:
        print(f"{item['file']}: {(SAMPLES / item['file']).stat().st_size} bytes")


if __name__ == "__main__":
    main()
