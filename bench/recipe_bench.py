"""What each recipe option does to test accuracy, at equal budget, on digits and shapes.

Every variant trains the same architecture with `striate train`'s engine for the same epochs,
batch size, schedule and split; only the recipe option differs. Each runs with several seeds
(initialisation, shuffling, augmentation); the table gives the mean and the spread (sample std)
of test accuracy, and the change of the mean against the recipe with every option off. The
"default" row is `TrainConfig`'s own recipe, i.e. what `striate train` gives without flags.

    .venv/bin/python bench/recipe_bench.py [--epochs 6] [--seeds 0 1 2] [--threads 1]

Writes bench/results/recipe.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import RECIPE_OFF, TrainConfig
from training.engine import train

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
VARIANTS: dict[str, dict] = {
    "all off": {},
    "EMA": {"ema": True},
    "MixUp 0.2 + CutMix 1.0": {"mixup": 0.2, "cutmix": 1.0},
    "TrivialAugmentWide": {"trivial_augment": True},
    "random erasing 0.25": {"random_erasing": 0.25},
    "default recipe": {k: DEFAULTS[k] for k in RECIPE_OFF},
}


def run_one(data: str, variant: dict, seed: int, args: argparse.Namespace, tmp: Path) -> float:
    values = {
        **RECIPE_OFF,
        **variant,
        "arch": args.arch,
        "base_width": args.base_width,
        "input_size": args.input_size,
        "data": data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": seed,
        "report": False,
        "out": str(tmp / f"{data}-{len(list(tmp.iterdir()))}"),
    }
    result = train(TrainConfig(**values), progress=False)
    return float(result.test_metrics["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", nargs="+", default=["digits", "shapes"])
    parser.add_argument("--variants", nargs="*", help="only these variants (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fair on a shared box)")
    parser.add_argument("--out", default="bench/results/recipe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {k: v for k, v in VARIANTS.items() if not args.variants or k in args.variants}

    results: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for name, variant in variants.items():
                accs = [run_one(data, variant, seed, args, Path(tmp)) for seed in args.seeds]
                results.setdefault(name, {})[data] = accs
                print(f"{data:7s} {name:24s} {' '.join(f'{a:.4f}' for a in accs)}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {k: getattr(args, k) for k in ("arch", "base_width", "input_size", "epochs", "batch_size", "seeds")}
    out.write_text(json.dumps({"setup": setup, "threads": args.threads, "results": results}, indent=2) + "\n")

    def cell(accs: list[float], base: list[float] | None) -> str:
        mean, spread = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        delta = "" if base is None else f" ({100 * (mean - statistics.mean(base)):+.1f})"
        return f"{mean:.3f} ± {spread:.3f}{delta}"

    print(f"{args.arch} width {args.base_width}, {args.input_size} px, {args.epochs} epochs, seeds {args.seeds}")
    print("| recipe | " + " | ".join(args.data) + " |")
    print("|---|" + "---|" * len(args.data))
    base = results.get("all off")
    for name, per_data in results.items():
        cells = [cell(per_data[d], None if name == "all off" or base is None else base[d]) for d in args.data]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
