#!/usr/bin/env bash
# Train the embedded default model (resnet18, base width 16, 1x32x32 input, 10 digit classes) on
# scikit-learn's bundled digits, deterministically (fixed seeds), and copy its best checkpoint to
# checkpoints/digits_default.pt. About 2 minutes on one CPU core. Extra arguments pass through to
# `striate train` (e.g. --device cuda). Export it afterwards with `striate export`.
set -euo pipefail
cd "$(dirname "$0")/.."
# One CPU thread: the result is bit-for-bit the committed checkpoint whatever the machine's core
# count (parallel reductions can round differently), and a shared box does not stall on thread sync.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN_DIR=${RUN_DIR:-runs/digits-default-$(date +%Y%m%d-%H%M%S)}
.venv/bin/striate train \
  --arch resnet18 --base-width 16 --input-size 32 \
  --data digits --data-seed 0 --seed 0 \
  --epochs 8 --batch-size 64 --optimizer adamw --lr 3e-3 --weight-decay 0.05 \
  --out "$RUN_DIR" "$@"
mkdir -p checkpoints
cp "$RUN_DIR/best.pt" checkpoints/digits_default.pt
.venv/bin/striate evaluate checkpoints/digits_default.pt --no-progress
ls -l checkpoints/digits_default.pt
