#!/usr/bin/env bash
# Train the embedded default model (resnet18, base width 16, 1x32x32 grayscale input, 10 digit
# classes) on `digits-handwritten`: scikit-learn's digits and font digits rendered as people write
# them (both polarities, paper and noise, a third of the frame to all of it, off-centre, rotated,
# thin or thick; see training/data/handwriting.py), deterministically (fixed seeds), then copy its
# best checkpoint to checkpoints/digits_default.pt, evaluate it on the test split, and measure it on
# the separately generated held-out pages. This one command remakes the default: it ends by running
# scripts/export_default.sh (the bundle exported/digits/1, then the held-out measurement); set
# EXPORT=0 to stop at the checkpoint. About 50 minutes on one CPU core. Extra arguments pass
# through to `striate train` (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# One CPU thread: the result is bit-for-bit the committed checkpoint whatever the machine's core
# count (parallel reductions can round differently), and a shared box does not stall on thread sync.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN_DIR=${RUN_DIR:-runs/digits-default-$(date +%Y%m%d-%H%M%S)}
"$VENV/bin/striate" train \
  --arch resnet18 --base-width 16 --input-size 32 --color-mode L \
  --data digits-handwritten --data-seed 0 --seed 0 \
  --epochs 18 --batch-size 128 --optimizer adamw --lr 3e-3 --weight-decay 0.05 --label-smoothing 0.05 \
  --out "$RUN_DIR" "$@"
mkdir -p checkpoints
cp "$RUN_DIR/best.pt" checkpoints/digits_default.pt
# The run's training report travels beside the checkpoint, so the export (scripts/export_default.sh)
# puts its figures into the bundle on any clone (see training/export/figures.py).
REPORT=checkpoints/digits_default.report
rm -rf "$REPORT" && mkdir -p "$REPORT"
for f in history.json metrics.json curves.png confusion.png report.html; do
  if [ -f "$RUN_DIR/$f" ]; then cp "$RUN_DIR/$f" "$REPORT/"; fi
done
"$VENV/bin/striate" evaluate checkpoints/digits_default.pt --no-progress
ls -l checkpoints/digits_default.pt
if [ "${EXPORT:-1}" != 0 ]; then
  VENV="$VENV" scripts/export_default.sh
fi
