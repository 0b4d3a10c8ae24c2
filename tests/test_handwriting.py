"""Digits as people write them: the `digits-handwritten` source, its held-out set, and the default bundle on it."""

from __future__ import annotations

import numpy as np
import pytest
from service_fixtures import DEFAULT_BUNDLE

from training.data.handwriting import SIZE, font_glyph, held_out_set, load_handwritten_source, render_page
from training.data.held_out import measure_bundle
from training.data.marker_pages import PAGE_SIDES, marker_pages
from training.data.sources import load_digits_source
from training.data.splits import stratified_split

# What the committed default bundle reaches on bench/handwriting_accuracy.py's held-out pages (the
# README's figures, rounded down; issue 12's goal is 0.97 on each). The test renders 359 pages per
# polarity with another seed, so it allows two standard errors of slack.
CLAIMED = {
    "dark_on_light": 0.97,
    "light_on_dark": 0.97,
    "sklearn_test": 0.98,
    "marker_dark_on_light": 0.98,
    "marker_light_on_dark": 0.98,
}
SLACK = 0.02


@pytest.fixture(scope="module")
def small_source():
    return load_handwritten_source(seed=0, copies=2, font_copies=1)


def test_each_split_holds_only_renderings_of_its_own_digits(small_source) -> None:
    digits = load_digits_source()
    split = stratified_split(digits.targets, 0.1, 0.2, 0, digits.classes)
    parts = small_source.predefined
    fonts = 13 * 10 * 1
    assert len(parts["train"]) == 3 * len(split.train) + fonts  # as shipped + 2 pages, + font pages
    assert len(parts["val"]) == 3 * len(split.val)
    assert len(parts["test"]) == 3 * len(split.test)
    # The test part is the test digits, in order: each as shipped then its pages, labels kept.
    test_targets = small_source.targets[parts["test"]]
    assert (test_targets[: len(split.test)] == digits.targets[split.test]).all()
    assert np.bincount(small_source.targets, minlength=10).min() > 0


def test_pages_come_in_both_polarities_and_the_same_seed_gives_the_same_pages() -> None:
    rng = np.random.default_rng(0)
    glyph = font_glyph(3, "DejaVuSans.ttf", rng)
    dark = render_page(glyph, np.random.default_rng(1), light_on_dark=False)
    light = render_page(glyph, np.random.default_rng(1), light_on_dark=True)
    assert dark.shape == light.shape == (SIZE, SIZE) and dark.dtype == np.uint8
    # Most of a page is paper: bright paper on a dark-on-light page, dark board on the other.
    assert np.median(dark) > 128 > np.median(light)
    assert (render_page(glyph, np.random.default_rng(1), light_on_dark=False) == dark).all()


def test_marker_pages_are_another_renderers_in_both_polarities() -> None:
    digits8 = held_out_set(copies=2).sklearn_test[:20]
    dark, which = marker_pages(digits8, copies=2, seed=1, light_on_dark=False)
    light, _ = marker_pages(digits8, copies=2, seed=1, light_on_dark=True)
    assert len(dark) == len(light) == 40 and (which == np.repeat(np.arange(20), 2)).all()
    assert {page.shape[0] for page in dark} <= set(PAGE_SIDES) and len({page.shape for page in dark}) > 1
    assert all(np.median(d) > 128 for d in dark) and all(np.median(p) < 128 for p in light)
    again, _ = marker_pages(digits8, copies=2, seed=1, light_on_dark=False)
    assert all((a == b).all() for a, b in zip(dark, again, strict=True))


def test_the_held_out_set_never_shows_a_training_digit() -> None:
    held = held_out_set(copies=2)
    digits = load_digits_source()
    assert digits.arrays is not None
    split = stratified_split(digits.targets, 0.1, 0.2, 0, digits.classes)
    seen = {a.tobytes() for a in digits.arrays[np.concatenate([split.train, split.val])]}
    assert not any(a.tobytes() in seen for a in held.sklearn_test)
    assert held.light_on_dark.sum() == (~held.light_on_dark).sum() == len(split.test)


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no default bundle")
def test_the_default_bundle_reads_handwriting_in_both_polarities() -> None:
    result = measure_bundle(DEFAULT_BUNDLE, seed=104729, copies=2)  # its own seed: other pages than the bench's
    for name, claimed in CLAIMED.items():
        assert getattr(result, name) >= claimed - SLACK, f"{name}: {getattr(result, name):.4f} < {claimed}"
