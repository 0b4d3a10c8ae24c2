"""The training report of a run directory: loss/accuracy curves, confusion matrix, report.html.

Reads `history.json` (one dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr,
seconds) and `metrics.json` (labels, accuracy, precision, recall, confusion, split), plus the run
config from `config.json` or, failing that, from `best.pt` / `last.pt`. A missing or unreadable
file is reported in the HTML (and skipped), never fatal; only a missing run directory is an error.
The HTML is static: it links the PNGs next to it, no JavaScript.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from striate.errors import StriateError

from .plots import new_figure, save_figure

CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
REPORT_HTML = "report.html"
FIGURE_FILES = {"curves": CURVES_PNG, "confusion": CONFUSION_PNG}  # figure name -> file in the run directory


def _read_json(path: Path, notes: list[str]) -> Any | None:
    if not path.is_file():
        notes.append(f"{path.name} not found in {path.parent}: its part of the report is skipped.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}): its part of the report is skipped.")
        return None


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the epochs where `key` holds a finite number."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(float(value))
    return xs, ys


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train vs validation, side by side (1000 x 400 px); a dashed
    line marks the best epoch (the one kept as best.pt)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 4)
    best = best_epoch(history)
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("Loss", "Accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, style, markersize=3, label=split)
        if best is not None and ax.has_data():
            ax.axvline(best[0], color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best[0]})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, labels: list[str], path: Path, split: str | None = None) -> Path:
    """Confusion matrix (rows = true class, columns = predicted) on a log colour scale of counts.

    A linear scale washes a handful of mistakes out next to hundreds of correct answers, so the
    colours follow log(count), empty cells stay white, and every non-zero cell carries its count
    (up to 40 classes); the mistakes (off the diagonal) are written in bold red.
    """
    from matplotlib.colors import LogNorm

    n = len(labels)
    side = float(min(max(5.0, 0.45 * n + 2.5), 16.0))
    fig = new_figure(side, side)
    ax = fig.subplots()
    counts = np.ma.masked_equal(confusion.astype(float), 0.0)
    top = max(float(confusion.max()), 2.0)
    im = ax.imshow(counts, cmap="Blues", norm=LogNorm(vmin=1.0, vmax=top))
    fig.colorbar(im, ax=ax, fraction=0.046, label="images (log scale)")
    ax.set_xticks(range(n), labels, rotation=90 if n > 10 or max(map(len, labels), default=0) > 3 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j, text, color, weight in confusion_annotations(confusion):
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8, fontweight=weight)
    wrong = int(confusion.sum() - np.trace(confusion))
    where = f"{split} split, " if split else ""
    ax.set_title(f"Confusion matrix ({where}{int(confusion.sum())} images, {wrong} wrong)")
    return save_figure(fig, path)


def confusion_annotations(confusion: np.ndarray, max_classes: int = 40) -> list[tuple[int, int, str, str, str]]:
    """(row, column, text, colour, weight) for every non-zero cell; mistakes in bold red."""
    if len(confusion) > max_classes:
        return []
    bright = math.sqrt(max(float(confusion.max()), 2.0))  # cells past the log midpoint are dark: white text
    cells = []
    for i, j in zip(*np.nonzero(confusion), strict=True):
        value = int(confusion[i, j])
        if i == j:
            cells.append((int(i), int(j), str(value), "white" if value > bright else "black", "normal"))
        else:
            cells.append((int(i), int(j), str(value), "#c00000", "bold"))
    return cells


def best_epoch(history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(epoch, val_acc) of the checkpoint kept as best.pt: the first epoch with the highest val_acc."""
    epochs, accs = _series(history, "val_acc")
    if not accs:
        return None
    i = int(np.argmax(accs))
    return int(epochs[i]), accs[i]


def format_duration(seconds: float) -> str:
    """Seconds for a person: "42 s", "3 min 05 s", "1 h 02 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def figure_captions(run_dir: str | Path) -> dict[str, tuple[Path, str]]:
    """name -> (PNG path, caption) for each report figure present in `run_dir` (written by write_report)."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    history = _read_json(run_dir / "history.json", notes)
    metrics = _read_json(run_dir / "metrics.json", notes)
    history = history if isinstance(history, list) and all(isinstance(r, dict) for r in history) else []
    metrics = metrics if isinstance(metrics, dict) else {}
    captions = {
        "curves": "Loss and accuracy per epoch, training vs validation split",
        "confusion": "Confusion matrix (rows: true class, columns: predicted; log colour scale, mistakes in red)",
    }
    best = best_epoch(history)
    if best is not None:
        epoch, acc = best
        captions["curves"] += f"; best epoch {epoch} of {len(history)} (val accuracy {acc:.4f}), kept as the model"
    confusion = metrics.get("confusion")
    if confusion is not None:
        counts = np.asarray(confusion, dtype=np.int64)
        if counts.ndim == 2 and counts.shape[0] == counts.shape[1]:
            wrong = int(counts.sum() - np.trace(counts))
            split = metrics.get("split", "test")
            captions["confusion"] += f", on the {split} split: {int(counts.sum())} images, {wrong} wrong"
    found = {}
    for name, file in FIGURE_FILES.items():
        if (run_dir / file).is_file():
            found[name] = (run_dir / file, captions[name])
    return found


def self_contained_report(run_dir: str | Path) -> str | None:
    """report.html of `run_dir` with its figures inlined as data: URIs (one file that opens anywhere:
    from a bundle folder, a service route or a sandboxed frame); None when the run has no report."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_HTML
    if not path.is_file():
        return None
    page = path.read_text(encoding="utf-8")
    for file in FIGURE_FILES.values():
        if (run_dir / file).is_file():
            encoded = base64.b64encode((run_dir / file).read_bytes()).decode("ascii")
            page = page.replace(f'src="{file}"', f'src="data:image/png;base64,{encoded}"')
    return page


def _load_config(run_dir: Path) -> dict[str, Any] | None:
    """The run config from config.json, else from the checkpoint (best.pt, then last.pt)."""
    path = run_dir / "config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {"config": data}
        except (OSError, ValueError):
            pass
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            try:
                from training.checkpoint import load_checkpoint

                ckpt = load_checkpoint(run_dir / name)
            except (StriateError, ImportError):
                continue
            return {
                "arch": ckpt.arch,
                "arch_kwargs": ckpt.arch_kwargs,
                "data": ckpt.data,
                "epoch": ckpt.epoch,
                **ckpt.config,
            }
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.{digits}f}"  # learning rates
    return html.escape(str(value))


def _rounded(key: str, value: Any) -> Any:
    """Per-epoch seconds to a tenth: timings are not known to a microsecond."""
    return f"{value:.1f}" if key == "seconds" and isinstance(value, int | float) else value


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _per_class_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    labels = [str(x) for x in metrics.get("labels", [])]
    precision = metrics.get("precision", [])
    recall = metrics.get("recall", [])
    confusion = metrics.get("confusion")
    support = np.asarray(confusion).sum(axis=1).tolist() if confusion else [None] * len(labels)
    rows = []
    for i, label in enumerate(labels):
        p = float(precision[i]) if i < len(precision) else float("nan")
        r = float(recall[i]) if i < len(recall) else float("nan")
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        rows.append([label, p, r, f1, support[i] if i < len(support) else "-"])
    return rows


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { background: #fff6d6; padding: 0.4em 0.8em; border-left: 4px solid #e0b000; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def write_report(run_dir: str | Path) -> Path:
    """Write curves.png, confusion.png and report.html into `run_dir`; return the HTML's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StriateError(f"run directory not found: {run_dir}")
    notes: list[str] = []
    history = _read_json(run_dir / "history.json", notes)
    metrics = _read_json(run_dir / "metrics.json", notes)
    if history is not None and not (isinstance(history, list) and all(isinstance(r, dict) for r in history)):
        notes.append("history.json is not a list of per-epoch objects: curves skipped.")
        history = None
    if metrics is not None and not isinstance(metrics, dict):
        notes.append("metrics.json is not an object: metrics skipped.")
        metrics = None

    sections: list[str] = []
    if metrics:
        split = metrics.get("split", "test")
        summary = [[f"{split} accuracy", metrics.get("accuracy", float("nan"))], ["split", split]]
        if "count" in metrics:
            summary.append([f"{split} images", metrics["count"]])
        if history:
            summary.append(["epochs", len(history)])
            best = best_epoch(history)
            if best is not None:
                summary.append(["best epoch (kept as best.pt)", f"{best[0]} (val accuracy {best[1]:.4f})"])
            seconds = [r.get("seconds") for r in history if isinstance(r.get("seconds"), int | float)]
            if seconds:
                summary.append(["training time", format_duration(float(sum(seconds)))])
        sections.append(f"<h2>Summary ({html.escape(str(split))} split)</h2>" + _table(["metric", "value"], summary))
    if history:
        plot_curves(history, run_dir / CURVES_PNG)
        sections.append(f'<h2>Learning curves</h2><img src="{CURVES_PNG}" alt="loss and accuracy per epoch">')
    if metrics and metrics.get("confusion") is not None:
        labels = [str(x) for x in metrics.get("labels", [])]
        confusion = np.asarray(metrics["confusion"], dtype=np.int64)
        if confusion.ndim == 2 and confusion.shape[0] == confusion.shape[1]:
            labels = labels if len(labels) == len(confusion) else [str(i) for i in range(len(confusion))]
            plot_confusion(confusion, labels, run_dir / CONFUSION_PNG, split=str(metrics.get("split", "test")))
            sections.append(
                f"<h2>Confusion matrix ({html.escape(str(metrics.get('split', 'test')))} split)</h2>"
                f'<img src="{CONFUSION_PNG}" alt="confusion matrix">'
            )
        else:
            notes.append("metrics.json's confusion matrix is not square: not drawn.")
    if metrics and metrics.get("labels"):
        sections.append(
            "<h2>Per-class precision and recall</h2>"
            + _table(["class", "precision", "recall", "F1", "support"], _per_class_rows(metrics))
        )
    if history:
        keys = [
            k
            for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
            if any(k in r for r in history)
        ]
        rows = [[_rounded(k, r.get(k, "-")) for k in keys] for r in history]
        sections.append("<h2>History</h2>" + _table(keys, rows))
    config = _load_config(run_dir)
    if config:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        sections.append(f"<h2>Run configuration</h2><pre>{html.escape(text)}</pre>")

    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    title = f"Training report: {run_dir.name}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{html.escape(title)}</h1>{note_html}{''.join(sections)}</body></html>\n"
    )
    out = run_dir / REPORT_HTML
    out.write_text(page, encoding="utf-8")
    return out
