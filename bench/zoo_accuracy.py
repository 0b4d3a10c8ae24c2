"""Accuracy of every zoo architecture on the digits after the same short training budget.

Every registered zoo model is trained by `striate train`'s engine with one recipe (same split,
input size, epochs, batch size, AdamW, learning rate, seed); widths are scaled by one multiplier
(models whose paper width is already small, like LeNet-5, keep it). Prints a markdown table:
parameters, test accuracy of the best-validation epoch, wall-clock training seconds.

    .venv/bin/python bench/zoo_accuracy.py [--epochs 4] [--input-size 16] [--width-mult 0.125]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig
from training.data import build_data
from training.engine import train
from training.models import create_model, list_models, model_entry

SMALL_WIDTH = 16  # paper widths at or below this are kept as they are


def bench_width(arch: str, mult: float) -> int:
    default = inspect.signature(model_entry(arch).builder).parameters["base_width"].default
    return default if default <= SMALL_WIDTH else max(4, round(default * mult))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=16)
    parser.add_argument("--width-mult", type=float, default=0.125, help="scale of each paper base width")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", nargs="*", help="only these architectures (default: every zoo model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fair on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    archs = args.arch or list_models(family="zoo")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        for arch in archs:
            width = bench_width(arch, args.width_mult)
            config = TrainConfig(
                arch=arch,
                data="digits",
                input_size=args.input_size,
                base_width=width,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                report=False,
                out=f"{tmp}/{arch}",
            )
            data = data or build_data(config)  # same split and preprocessing for every model
            params = sum(
                p.numel()
                for p in create_model(
                    arch, num_classes=10, in_chans=1, input_size=args.input_size, base_width=width
                ).parameters()
            )
            start = time.perf_counter()
            result = train(config, data=data, progress=False)
            seconds = time.perf_counter() - start
            rows.append((arch, width, params, result.best_val_acc, result.test_metrics["accuracy"], seconds))
            print(f"{arch}: test acc {rows[-1][4]:.4f} in {seconds:.0f}s", file=sys.stderr)

    print(
        f"\nDigits (1,797 8x8 images, stratified 70/10/20 split, data seed 0), input 1x{args.input_size}x"
        f"{args.input_size}, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr} cosine, seed "
        f"{args.seed}, widths x{args.width_mult} (paper width <= {SMALL_WIDTH} kept), CPU "
        f"({torch.get_num_threads()} threads)\n"
    )
    print("| architecture | base width | parameters | best val acc | test acc | train s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for arch, width, params, val, test, seconds in rows:
        print(f"| {arch} | {width} | {params / 1e6:.2f}M | {val:.4f} | {test:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
