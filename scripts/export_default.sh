#!/usr/bin/env bash
# Regenerate the committed default bundle exported/digits/1/ from checkpoints/digits_default.pt
# (itself made by scripts/train_default.sh). Versions are never overwritten, so the old folder is
# moved aside first and restored if the export fails.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=exported/digits/1
if [ -d "$BUNDLE" ]; then
  mv "$BUNDLE" "$BUNDLE.previous"
  trap '[ -d "$BUNDLE" ] || mv "$BUNDLE.previous" "$BUNDLE"' ERR
fi
"${VENV:-.venv}/bin/striate" export checkpoints/digits_default.pt --name digits --version 1 --out exported
rm -rf "$BUNDLE.previous"
ls -l "$BUNDLE"
# The held-out accuracy on digits as people write them (both polarities), as the service sees them.
"${VENV:-.venv}/bin/python" bench/handwriting_accuracy.py "$BUNDLE"
