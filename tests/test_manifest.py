"""The manifest schema refuses inconsistent bundles before the service ever sees them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from striate.manifest import Manifest

BASE = {
    "name": "digits",
    "version": 1,
    "architecture": "resnet18",
    "labels": ["0", "1"],
    "input": {"channels": 1, "height": 32, "width": 32},
    "preprocessing": {
        "color_mode": "L",
        "resize_size": [32, 32],
        "crop_size": [32, 32],
        "mean": [0.5],
        "std": [0.25],
    },
    "outputs": [
        {"name": "logits", "shape": [-1, 2]},
        {"name": "embedding", "shape": [-1, 16]},
    ],
    "layers": [{"name": "embedding", "output": "embedding", "dim": 16}],
    "provenance": {"created": "2026-11-25T00:00:00Z"},
}


def _with(**changes):
    return {**BASE, **changes}


def test_a_consistent_manifest_validates_and_round_trips(tmp_path) -> None:
    manifest = Manifest.model_validate(BASE)
    manifest.dump(tmp_path)
    assert Manifest.load(tmp_path) == manifest
    assert manifest.layer("embedding").dim == 16 and manifest.layer("nope") is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"layers": [{"name": "embedding", "output": "missing", "dim": 16}]}, "missing output"),
        ({"input": {"channels": 3, "height": 32, "width": 32}}, "channels disagree"),
        ({"input": {"channels": 1, "height": 64, "width": 32}}, "crop size"),
        ({"labels": []}, "at least one label"),
        ({"name": "Bad Name"}, "pattern"),
        ({"unexpected": 1}, "Extra inputs"),
        ({"preprocessing": {**BASE["preprocessing"], "mean": [0.5, 0.5, 0.5]}}, "mean/std need 1"),
    ],
)
def test_inconsistent_manifests_are_refused(changes, message) -> None:
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(_with(**changes))
