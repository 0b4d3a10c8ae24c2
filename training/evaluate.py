"""Predictions and classification metrics: accuracy, per-class precision/recall, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, progress: bool = False, desc: str = "eval"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K] float32 on CPU, targets [N] int64) for every batch of `loader`, in order."""
    was_training = model.training
    model.eval()
    logits, targets = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        targets.append(labels)
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(targets).long()


def classification_metrics(
    targets: np.ndarray | torch.Tensor,
    predictions: np.ndarray | torch.Tensor,
    labels: list[str],
    split: str = "test",
) -> dict[str, Any]:
    """The `metrics.json` of a run: labels, accuracy, per-class precision and recall, confusion.

    `confusion[i][j]` counts images of true class i predicted as j. A class never predicted has
    precision 0 (scikit-learn's `zero_division=0`), one absent from the split has recall 0.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # slow import: lazy

    y_true = np.asarray(targets, dtype=np.int64)
    y_pred = np.asarray(predictions, dtype=np.int64)
    classes = list(range(len(labels)))
    precision, recall, _, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "labels": list(labels),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "support": [int(v) for v in support],
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "split": split,
        "count": len(y_true),
    }


def format_metrics(metrics: dict[str, Any]) -> str:
    """A human-readable report: accuracy, a per-class table and the confusion matrix."""
    labels = [str(v) for v in metrics["labels"]]
    width = max(5, *(len(v) for v in labels))
    lines = [
        f"{metrics['split']} accuracy: {metrics['accuracy']:.4f} ({metrics['count']} images)",
        "",
        f"{'class':<{width}}  precision  recall  support",
    ]
    for i, label in enumerate(labels):
        lines.append(
            f"{label:<{width}}  {metrics['precision'][i]:9.4f}  {metrics['recall'][i]:6.4f}  {metrics['support'][i]:7d}"
        )
    confusion = metrics["confusion"]
    cell = max(len(str(v)) for row in confusion for v in row)
    cell = max(cell, *(len(v) for v in labels))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    lines.append(" " * width + "  " + " ".join(f"{v:>{cell}}" for v in labels))
    for label, row in zip(labels, confusion, strict=True):
        lines.append(f"{label:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
