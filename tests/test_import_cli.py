"""`striate import` as the issue writes it: `striate import model.onnx --labels labels.txt
[--preprocessing ...] [--target-tensor NAME]`. The name defaults to the file's, labels come as text
or a JSON list, preprocessing from a JSON object or another bundle's manifest, and what cannot be
right is one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from striate.cli import main as cli
from striate.manifest import Manifest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    """A small 3-class RGB classifier exported by torch.onnx, under a file name with a space and capitals."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "My Net_v2.onnx"
    x = torch.randn(1, 3, 32, 32)
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli(["import", *map(str, args)])
    said = capsys.readouterr()
    return code, said.out, said.err


def test_name_from_the_file_labels_as_json_and_one_value_per_statistic(onnx_path, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["cat", "dog", "owl"]))
    code, out, _ = run(capsys, onnx_path, "--labels", labels, "--mean", "0.5", "--std", "0.25", "--out", tmp_path)
    assert code == 0 and "wrote" in out
    manifest = Manifest.load(tmp_path / "my-net_v2" / "1")
    assert manifest.labels == ("cat", "dog", "owl")
    assert manifest.preprocessing.mean == (0.5,) * 3 and manifest.preprocessing.std == (0.25,) * 3
    assert manifest.preprocessing.crop_size == (32, 32)  # the graph's own size


def test_preprocessing_from_json_or_from_another_bundles_manifest(onnx_path, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nowl\n\n")  # trailing blank lines are fine
    given = {
        "color_mode": "RGB",
        "resize_mode": "exact",
        "resize_size": [40, 40],
        "crop_size": [32, 32],
        "interpolation": "bicubic",
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.2, 0.2],
    }
    args = ["--labels", labels, "--out", tmp_path]
    long_inline = json.dumps(given, indent=40)  # longer than a file name may be
    assert run(capsys, onnx_path, *args, "--name", "inline", "--preprocessing", long_inline)[0] == 0
    inline = Manifest.load(tmp_path / "inline" / "1").preprocessing
    assert inline.model_dump(mode="json") == given

    manifest = tmp_path / "inline" / "1" / "manifest.json"
    assert run(capsys, onnx_path, *args, "--name", "copied", "--preprocessing", manifest, "--std", "0.3")[0] == 0
    copied = Manifest.load(tmp_path / "copied" / "1").preprocessing
    assert copied.model_dump(mode="json") == given | {"std": [0.3, 0.3, 0.3]}  # a flag overrides one field

    # A new size keeps the resize/crop ratio of an exact resize, side by side.
    small = json.dumps(given | {"resize_size": [20, 25], "crop_size": [16, 20]})
    assert run(capsys, onnx_path, *args, "--name", "scaled", "--preprocessing", small, "--size", "32")[0] == 0
    scaled = Manifest.load(tmp_path / "scaled" / "1").preprocessing
    assert scaled.crop_size == (32, 32) and scaled.resize_size == (40, 40)


@pytest.mark.parametrize(
    ("labels", "flags", "message"),
    [
        ("cat\n\ndog\nowl\n", ["--mean", "0.5", "--std", "0.25"], "line 2 is blank (one label per line"),
        ("cat\ndog\nowl\n", ["--preprocessing", '{"color_mode": "X"}'], "bad --preprocessing: color_mode"),
        ("cat\ndog\nowl\n", ["--preprocessing", "{not json"], "neither a JSON object nor a file holding one"),
        ("cat\ndog\nowl\n", ["--preprocessing", "no/such/file.json"], "neither a JSON object nor a readable file"),
        ("cat\ndog\nowl\n", ["--preset", "imagenet", "--color-mode", "L"], "the graph takes 3-channel images, but"),
        ("cat\ndog\nowl\n", ["--mean", "0.5", "0.4", "--std", "0.2"], "--mean takes 1 or 3 values for 3-channel"),
        ("cat\ndog\nowl\n", [], "say how inputs are normalised: --preset imagenet, --preprocessing, or --mean"),
    ],
)
def test_what_cannot_be_right_is_one_line_and_writes_nothing(onnx_path, tmp_path, capsys, labels, flags, message):
    (tmp_path / "labels.txt").write_text(labels)
    repo = tmp_path / "repo"
    code, _, err = run(capsys, onnx_path, "--labels", tmp_path / "labels.txt", "--out", repo, *flags)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not repo.exists() or not any(repo.iterdir())
