"""Held-out accuracy of a digits bundle on digits as people write them, per polarity.

    python bench/handwriting_accuracy.py [exported/digits/1] [--copies 8] [--seed 7919]

The pages are rendered from scikit-learn's test-split digits only (the split every digits run
holds out), with a generator seed of their own, so nothing here was seen in training in any form;
they run through the service's preprocessing and the bundle's ONNX graph on onnxruntime. Prints
JSON and writes it to bench/results/handwriting_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.data.held_out import measure_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", default="exported/digits/1", help="bundle directory")
    parser.add_argument("--copies", type=int, default=8, help="pages per test digit (half of each polarity)")
    parser.add_argument("--seed", type=int, default=7919, help="the held-out renderer's seed")
    args = parser.parse_args()
    result = measure_bundle(args.bundle, seed=args.seed, copies=args.copies).as_dict()
    result["bundle"] = str(args.bundle)
    text = json.dumps(result, indent=2)
    print(text)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "handwriting_accuracy.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
