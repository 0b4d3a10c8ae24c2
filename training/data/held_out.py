"""Accuracy of an exported bundle on digits as people write them, measured as the service sees them.

The pages come from `handwriting.held_out_set` (scikit-learn's test-split digits only, rendered with
their own seed), go through `striate.preprocess` (the service's own preprocessing) and the bundle's
ONNX graph on onnxruntime. Used by `bench/handwriting_accuracy.py` and by the test of the committed
default bundle, so the number in the README and the number the test checks are computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from striate.manifest import Manifest
from striate.preprocess import preprocess

from .handwriting import held_out_set
from .marker_pages import marker_pages


@dataclass
class HeldOutAccuracy:
    dark_on_light: float
    light_on_dark: float
    sklearn_test: float
    pages: int  # per polarity
    sklearn_digits: int
    # The same test digits drawn by a renderer written apart from training's (marker_pages.py).
    marker_dark_on_light: float
    marker_light_on_dark: float
    marker_pages: int  # per polarity

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _reader(bundle_dir: Path, manifest: Manifest, batch: int = 256) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """A function from uint8 pages to the digits the bundle reads (one onnxruntime session for all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(bundle_dir / manifest.graph), sess_options=options, providers=["CPUExecutionProvider"]
    )
    digits = np.asarray([int(label) for label in manifest.labels])

    def read(pages: Sequence[np.ndarray]) -> np.ndarray:
        predictions = []
        for start in range(0, len(pages), batch):
            chunk = pages[start : start + batch]
            x = np.stack([preprocess(Image.fromarray(a), manifest.preprocessing) for a in chunk])
            (logits,) = session.run([manifest.logits_output], {manifest.input.name: x})
            predictions.append(logits.argmax(axis=1))
        return digits[np.concatenate(predictions)]

    return read


def measure_bundle(bundle_dir: str | Path, seed: int = 7919, copies: int = 4) -> HeldOutAccuracy:
    """Per-polarity accuracy on `copies` held-out pages per test digit (half of each polarity), on
    the plain test digits, and on `copies` / 2 marker pages per digit and polarity."""
    bundle_dir = Path(bundle_dir)
    manifest = Manifest.load(bundle_dir)
    read = _reader(bundle_dir, manifest)
    held = held_out_set(seed=seed, copies=copies)
    correct = read(held.images) == held.targets
    marker = {}
    for light in (False, True):
        drawn, which = marker_pages(held.sklearn_test, copies // 2 or 1, seed, light_on_dark=light)
        marker[light] = (read(drawn) == held.sklearn_test_targets[which]).mean(), len(drawn)
    return HeldOutAccuracy(
        dark_on_light=float(correct[~held.light_on_dark].mean()),
        light_on_dark=float(correct[held.light_on_dark].mean()),
        sklearn_test=float((read(held.sklearn_test) == held.sklearn_test_targets).mean()),
        pages=int((~held.light_on_dark).sum()),
        sklearn_digits=len(held.sklearn_test_targets),
        marker_dark_on_light=float(marker[False][0]),
        marker_light_on_dark=float(marker[True][0]),
        marker_pages=int(marker[False][1]),
    )
