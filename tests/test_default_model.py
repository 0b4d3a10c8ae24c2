"""The embedded default model, served over HTTP, scores on its held-out test split what it claims.

The claim is read from the committed bundle's manifest (the figure training measured with torch),
and the split is rebuilt from the checkpoint that bundle names (its recorded data config and seed),
so retraining the default model needs no edit here. Training images are never scored.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import DEFAULT_BUNDLE, REPO

from striate.manifest import Manifest

CLAIM_KEYS = ("test_acc", "test_accuracy")  # what training records as the test split's accuracy


def _claim(manifest: Manifest) -> float:
    found = [manifest.metrics[k] for k in CLAIM_KEYS if k in manifest.metrics]
    assert found, f"the default bundle's manifest claims no test accuracy (metrics: {sorted(manifest.metrics)})"
    return found[0]


@pytest.fixture(scope="module")
def default_manifest() -> Manifest:
    assert (DEFAULT_BUNDLE / "manifest.json").is_file(), "the default bundle is committed"
    return Manifest.load(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def heldout(default_manifest: Manifest):
    """(PNG bytes, labels) of the test split of the checkpoint the default bundle was exported from."""
    from training.checkpoint import file_sha256, load_checkpoint
    from training.config import TrainConfig
    from training.data import build_eval_dataset

    prov = default_manifest.provenance
    ckpt_path = REPO / prov.checkpoint
    assert file_sha256(ckpt_path) == prov.checkpoint_sha256, "the bundle was exported from the committed checkpoint"
    ckpt = load_checkpoint(ckpt_path)
    dataset = build_eval_dataset(TrainConfig.from_dict(ckpt.config), ckpt.preprocessing, "test")
    train = build_eval_dataset(TrainConfig.from_dict(ckpt.config), ckpt.preprocessing, "train")
    assert not set(dataset.indices) & set(train.indices), "test and training images overlap"
    images = []
    for index in dataset.indices:
        buf = io.BytesIO()
        dataset.source.image(int(index)).save(buf, format="PNG")
        images.append(buf.getvalue())
    return images, [default_manifest.labels[t] for t in dataset.targets]


def test_default_model_scores_its_claimed_accuracy_over_http(client, default_manifest: Manifest, heldout) -> None:
    images, truth = heldout
    predicted: list[str] = []
    for start in range(0, len(images), 128):
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[start : start + 128])]
        r = client.post("/v1/models/digits/classify?top_k=1", files=files)
        assert r.status_code == 200, r.text
        predicted += [result["label"] for result in r.json()["results"]]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert abs(accuracy - _claim(default_manifest)) <= 1 / len(truth) + 1e-9  # equal within one image


def test_readme_describes_the_committed_default_bundle(default_manifest: Manifest) -> None:
    """The README's architecture, accuracy and parity figures are the committed manifest's."""
    readme = " ".join((Path(REPO) / "README.md").read_text(encoding="utf-8").split())
    stated = re.search(r"default model `digits` \(an? (\w+) trained on .*?, (\d+\.\d)% test accuracy\)", readme)
    assert stated is not None, "README's description of the default model is gone"
    assert stated.group(1) == default_manifest.architecture
    assert float(stated.group(2)) == round(100 * _claim(default_manifest), 1)
    parity = re.search(r"Parity of the default bundle .*?: logits (\S+), embedding (\S+), cam (\S+) ", readme)
    assert parity is not None, "README's parity figures of the default bundle are gone"
    recorded = default_manifest.provenance.parity
    assert recorded is not None
    for text, value in zip(
        parity.groups(),
        (recorded.max_abs_diff_logits, recorded.max_abs_diff_embedding, recorded.max_abs_diff_cam),
        strict=True,
    ):
        assert float(text) == pytest.approx(value, rel=0.05), (text, value)
