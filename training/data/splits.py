"""Deterministic, stratified train/val/test splits from a seed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from striate.errors import StriateError


class Split(NamedTuple):
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _class_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of a class's n images go to val and to test (at least one each when asked for)."""
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return n_val, n_test


def stratified_split(
    targets: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    classes: list[str] | None = None,
) -> Split:
    """Split indices per class with the given fractions; the same inputs always give the same split.

    Each class is shuffled by one generator seeded with `seed` (classes in order), then cut into
    test, val and train parts, so every split keeps the class proportions of the whole.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for target in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == target))
        n_val, n_test = _class_counts(len(members), val_fraction, test_fraction)
        if len(members) - n_val - n_test < 1:
            name = classes[target] if classes is not None else str(target)
            need = 1 + (val_fraction > 0) + (test_fraction > 0)
            raise StriateError(
                f"class {name!r} has only {len(members)} image(s); a train/val/test split needs at least {need}"
            )
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return Split(*(np.sort(np.concatenate(parts[k])).astype(np.int64) for k in ("train", "val", "test")))


def split_with_predefined(
    targets: np.ndarray,
    predefined: dict[str, np.ndarray],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    classes: list[str] | None = None,
) -> Split:
    """Use a folder's own train/val/test parts; carve the missing ones out of train (stratified)."""
    train = predefined["train"]
    carve_val = 0.0 if "val" in predefined else val_fraction
    carve_test = 0.0 if "test" in predefined else test_fraction
    if carve_val == 0 and carve_test == 0:
        return Split(train, predefined.get("val", train[:0]), predefined["test"])
    inner = stratified_split(targets[train], carve_val, carve_test, seed, classes)
    carved_val, carved_test = inner.val, inner.test
    val = predefined.get("val", train[carved_val])
    test = predefined.get("test", train[carved_test])
    return Split(train[inner.train], np.sort(val), np.sort(test))
