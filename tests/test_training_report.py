"""The training report says what a reader needs: mistakes visible, the split, the best epoch, times rounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.analysis.report import best_epoch, confusion_annotations, format_duration, write_report


def test_every_mistake_in_the_confusion_matrix_is_written_in_red() -> None:
    confusion = np.array([[500, 1, 0], [0, 480, 3], [2, 0, 510]])
    cells = {(i, j): (text, color) for i, j, text, color, _ in confusion_annotations(confusion)}
    off_diagonal = {(i, j) for i, j in zip(*np.nonzero(confusion), strict=True) if i != j}
    assert off_diagonal == {(0, 1), (1, 2), (2, 0)}
    for cell in off_diagonal:
        assert cells[cell] == (str(confusion[cell]), "#c00000")
    assert cells[(0, 0)][0] == "500" and (0, 2) not in cells  # zeros stay blank


def test_best_epoch_is_the_first_with_the_highest_val_accuracy() -> None:
    history = [{"epoch": e, "val_acc": acc} for e, acc in enumerate([0.5, 0.9, 0.95, 0.95, 0.93], start=1)]
    assert best_epoch(history) == (3, 0.95)
    assert best_epoch([{"epoch": 1}]) is None


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [format_duration(s) for s in (4.4, 59.6, 185.2, 3725.0)] == ["4 s", "1 min 00 s", "3 min 05 s", "1 h 02 min"]


def test_report_names_the_split_the_best_epoch_and_rounds_times(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.9, "val_loss": 1.1 / e, "val_acc": acc, "seconds": 61.23456}
        for e, acc in enumerate([0.8, 0.97, 0.96], start=1)
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    confusion = [[40, 2], [1, 57]]
    metrics = {"labels": ["a", "b"], "accuracy": 0.97, "confusion": confusion, "split": "test", "count": 100}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(tmp_path).read_text()
    assert "Confusion matrix (test split)" in page
    assert "best epoch (kept as best.pt)</td><td>2 (val accuracy 0.9700)" in page
    assert "training time</td><td>3 min 04 s" in page
    assert "61.2</td>" in page and "61.23456" not in page
    assert (tmp_path / "confusion.png").stat().st_size > 0
