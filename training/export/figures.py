"""The training figures a bundle carries: found beside the checkpoint, copied into `figures/`.

`striate train` writes its report (curves.png, confusion.png, report.html, from history.json and
metrics.json) into the run directory, next to best.pt and last.pt. A checkpoint copied out of its run
keeps its report in `<checkpoint stem>.report/` beside it (scripts/train_default.sh does this for
checkpoints/digits_default.pt), so a fresh clone re-exports the same bundle. The bundle gets the PNGs
and a self-contained report.html (figures inlined), and the manifest lists them with captions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from striate.manifest import FIGURES_DIR, Figure
from training.analysis.report import FIGURE_FILES, REPORT_HTML, figure_captions, self_contained_report

REPORT_SUFFIX = ".report"  # checkpoints/x.pt keeps its run's report in checkpoints/x.report/
RUN_HISTORY = "history.json"  # what marks a checkpoint's folder as its run directory
REPORT_FILES = (*FIGURE_FILES.values(), REPORT_HTML)


def report_dir_of(checkpoint: str | os.PathLike) -> Path | None:
    """The folder holding the checkpoint's training report: `<stem>.report/` beside it, else the
    checkpoint's own folder when it is a run directory with a report in it; None when there is none."""
    path = Path(checkpoint)
    beside = path.with_suffix(REPORT_SUFFIX)
    run_dir = path.parent if (path.parent / RUN_HISTORY).is_file() else None
    for folder in (beside, run_dir):
        if folder is not None and folder.is_dir() and any((folder / f).is_file() for f in REPORT_FILES):
            return folder
    return None


def copy_figures(report_dir: str | os.PathLike, bundle_dir: str | os.PathLike) -> tuple[dict[str, Figure], str | None]:
    """Copy the report's figures into `bundle_dir/figures/`; return the manifest's `figures` and `report`."""
    report_dir, bundle_dir = Path(report_dir), Path(bundle_dir)
    found = figure_captions(report_dir)
    page = self_contained_report(report_dir)
    if not found and page is None:
        return {}, None
    out = bundle_dir / FIGURES_DIR
    out.mkdir(exist_ok=True)
    figures = {}
    for name, (png, caption) in found.items():
        shutil.copyfile(png, out / png.name)
        figures[name] = Figure(file=f"{FIGURES_DIR}/{png.name}", caption=caption)
    report = None
    if page is not None:
        (out / REPORT_HTML).write_text(page, encoding="utf-8")
        report = f"{FIGURES_DIR}/{REPORT_HTML}"
    return figures, report
