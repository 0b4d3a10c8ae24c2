"""`striate train` / `striate evaluate` as a user runs them: real subprocesses, real files.

Bad input must give one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from training.data import digits_to_images

ROOT = Path(__file__).resolve().parents[1]
STRIATE = ROOT / ".venv" / "bin" / "striate"


def striate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = [str(STRIATE)] if STRIATE.exists() else [sys.executable, "-m", "striate.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd or ROOT)


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"striate {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_digit_folder(root: Path, classes=("0", "1", "2"), per_class: int = 10) -> Path:
    bunch = load_digits()
    images = digits_to_images(bunch.images)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(bunch.target == int(name))[:per_class]:
            Image.fromarray(images[i]).save(root / name / f"{i}.png")
    return root


TINY = ["--arch", "lenet5", "--input-size", "8", "--epochs", "1", "--batch-size", "8", "--no-progress", "--no-report"]


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory) -> Path:
    root = write_digit_folder(tmp_path_factory.mktemp("data") / "digits")
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not the rest of a png")
    return root


@pytest.fixture(scope="module")
def skipped_run(corrupt_folder, tmp_path_factory) -> Path:
    """`--on-bad-image skip` trains anyway, reporting the corrupt file by path."""
    out = tmp_path_factory.mktemp("runs") / "run"
    proc = striate("train", *TINY, "--data-dir", str(corrupt_folder), "--on-bad-image", "skip", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"skipping corrupt image {corrupt_folder / '1' / 'broken.png'}" in proc.stderr
    assert "test acc" in proc.stdout
    return out


def test_unknown_architecture(tmp_path):
    proc = striate("train", "--arch", "resnet19", "--data", "digits", "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "train", "unknown architecture 'resnet19'", "resnet18")
    assert not (tmp_path / "r").exists()


def test_missing_and_empty_data_folders(tmp_path):
    proc = striate("train", *TINY, "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(proc, "train", "data folder not found", "nowhere")
    (tmp_path / "empty").mkdir()
    proc = striate("train", *TINY, "--data-dir", str(tmp_path / "empty"))
    assert_one_line_error(proc, "train", "has no class sub-folders")


def test_class_folder_without_images(tmp_path):
    root = write_digit_folder(tmp_path / "data", per_class=4)
    (root / "9").mkdir()
    (root / "9" / "readme.txt").write_text("nothing to see")
    proc = striate("train", *TINY, "--data-dir", str(root))
    assert_one_line_error(proc, "train", f"class folder {root / '9'} has no images")


def test_corrupt_image_fails_the_run_by_default(corrupt_folder, tmp_path):
    proc = striate("train", *TINY, "--data-dir", str(corrupt_folder), "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "train", f"corrupt image {corrupt_folder / '1' / 'broken.png'}", "--on-bad-image skip")


def test_evaluate_prints_accuracy_per_class_and_confusion(skipped_run):
    proc = striate("evaluate", str(skipped_run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy:" in proc.stdout and "precision  recall" in proc.stdout
    assert "confusion matrix" in proc.stdout
    proc = striate("evaluate", str(skipped_run / "best.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["labels"] == ["0", "1", "2"] and metrics["split"] == "test"
    assert np.asarray(metrics["confusion"]).shape == (3, 3) and sum(metrics["support"]) == metrics["count"]
    saved = json.loads((skipped_run / "metrics.json").read_text())
    assert set(saved) <= set(metrics) and saved["count"] == metrics["count"] > 0
    for key in ("labels", "split", "support", "confusion"):
        assert metrics[key] == saved[key], key
    for key in ("accuracy", "precision", "recall"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-12), key
    confusion = np.asarray(metrics["confusion"])
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_evaluate_bad_checkpoints(skipped_run, tmp_path):
    proc = striate("evaluate", str(skipped_run), "--arch", "vgg11")
    assert_one_line_error(proc, "evaluate", "is a lenet5 checkpoint, not a vgg11")
    other = write_digit_folder(tmp_path / "two", classes=("0", "1"), per_class=3)
    proc = striate("evaluate", str(skipped_run), "--data-dir", str(other))
    assert_one_line_error(proc, "evaluate", "the checkpoint has 3 classes", "the data has 2")


def test_resume_keeps_the_run_definition(skipped_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(skipped_run, run)
    proc = striate("train", "--resume", str(run), "--lr", "0.5")
    assert_one_line_error(proc, "train", "--lr cannot change when resuming")


FINETUNE_TINY = [
    "--backbone",
    "efficientnet_lite0",
    "--weights",
    "none",
    "--data",
    "shapes",
    "--shapes-per-class",
    "6",
    "--input-size",
    "32",
    "--epochs",
    "1",
    "--no-progress",
    "--no-report",
]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ft"
    proc = striate("finetune", *FINETUNE_TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_file_that_is_not_a_checkpoint_never_suggests_unsafe_loading(tmp_path):
    import pickle

    pickled = tmp_path / "objects.pt"
    pickled.write_bytes(pickle.dumps(Path("anything")))  # a pickle of a Python object, not plain data
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for command, args in (("evaluate", [str(pickled)]), ("train", ["--resume", str(pickled)])):
        line = assert_one_line_error(striate(command, *args), command, str(pickled), "pickled Python objects")
        assert "weights_only" not in line and "trust" not in line.lower()
    line = assert_one_line_error(striate("evaluate", str(text)), "evaluate", "not a PyTorch file")
    assert "best.pt or last.pt" in line


def test_train_resume_of_a_finetuning_run_names_the_right_command(finetune_run):
    line = assert_one_line_error(
        striate("train", "--resume", str(finetune_run)),
        "train",
        "is a fine-tuning run of efficientnet_lite0",
        f"striate finetune --resume {finetune_run}",
    )
    assert "Traceback" not in line


def test_finetune_resume_of_a_training_run_names_the_right_command(skipped_run):
    line = assert_one_line_error(
        striate("finetune", "--resume", str(skipped_run), "--epochs", "2"),
        "finetune",
        "is a training run of lenet5",
        f"striate train --resume {skipped_run}",
    )
    assert "efficientnet" not in line  # an architecture the user never passed


def test_finetune_resume_keeps_the_run_definition(finetune_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finetune_run, run)
    proc = striate("finetune", "--resume", str(run), "--epochs", "2", "--lr", "0.5")
    assert_one_line_error(proc, "finetune", "--lr cannot change when resuming", "--epochs")
    proc = striate("finetune", "--resume", str(run), "--mode", "probe")
    assert_one_line_error(proc, "finetune", "--mode cannot change when resuming", "'finetune'")
    proc = striate("finetune", "--resume", str(run), "--epochs", "2", "--no-progress", "--no-report")
    assert proc.returncode == 0, proc.stderr
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]


def test_recipe_flags_are_recorded_and_define_the_run(tmp_path):
    from training.checkpoint import load_checkpoint

    run = tmp_path / "recipe"
    recipe = ["--ema", "--ema-decay", "0.9", "--mixup", "0.2", "--random-erasing", "0.25", "--amp"]
    proc = striate("train", *TINY, "--data", "shapes", "--shapes-per-class", "6", *recipe, "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "--amp apply on CUDA only" in proc.stderr  # asked for on CPU: said so, trained in float32
    config = load_checkpoint(run / "best.pt").config
    assert (config["ema"], config["ema_decay"], config["mixup"], config["random_erasing"]) == (True, 0.9, 0.2, 0.25)
    assert (config["cutmix"], config["trivial_augment"], config["amp"]) == (0.0, False, True)
    proc = striate("train", "--resume", str(run), "--epochs", "2", "--no-ema")
    assert_one_line_error(proc, "train", "--ema cannot change when resuming (the run used True)")
    proc = striate("train", "--resume", str(run), "--epochs", "2", "--deterministic", "--no-progress", "--no-report")
    assert proc.returncode == 0, proc.stderr
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 2 and last.config["deterministic"] is True and last.config["ema"] is True
