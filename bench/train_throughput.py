"""Training throughput of `striate train`'s loop vs a bare PyTorch loop, in the same run.

Both loops train the same resnet18 (same init, AdamW, cross-entropy) at 64x64 on CPU:
- bare:          a plain `for x, y in batches: forward, loss, backward, step` over batches already
                 held in memory as tensors (no data pipeline, no bookkeeping): the floor;
- striate:       `training.engine.train_one_epoch` exactly as `striate train` runs it, fed by the
                 striate data pipeline (digits decoded, resized to 64x64, augmented, normalised
                 per image in a DataLoader), with the progress bar, LR schedule and metrics;
- striate-loop:  the same engine loop fed from in-memory tensors, isolating the loop's own cost.

Trials alternate between the loops so that load on a shared machine hits them alike; the median
img/s of each is reported with the overhead relative to the bare loop (target: <= 10%).

    .venv/bin/python bench/train_throughput.py [--batches 16] [--trials 3] [--base-width 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TrainConfig
from training.data import build_data
from training.engine import lr_at, train_one_epoch
from training.models import create_model


def make_model(base_width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=10, in_chans=1, input_size=64, base_width=base_width)


def bare_loop(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> float:
    """Seconds for one pass of the plainest loop there is."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def engine_loop(model: nn.Module, loader: DataLoader, lr: float, progress: bool) -> float:
    """Seconds for one pass of `striate train`'s loop (the function the Trainer calls each epoch)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = len(loader)
    start = time.perf_counter()
    train_one_epoch(
        model,
        loader,
        opt,
        nn.CrossEntropyLoss(),
        torch.device("cpu"),
        lambda s: lr_at(s, steps, steps // 4, lr, lr * 0.01),
        0,
        progress=progress,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16, help="batches per trial (default: 16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3, help="timed trials per loop (default: 3)")
    parser.add_argument("--base-width", type=int, default=16, help="resnet18 width (64 = the paper's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default; 1 is steadiest)")
    parser.add_argument("--no-progress", action="store_true", help="hide the engine's progress bar")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    n = args.batches * args.batch_size
    data = build_data(TrainConfig(data="digits", input_size=64))
    train_set = Subset(data.train, range(min(n, len(data.train))))
    if len(train_set) < n:
        raise SystemExit(f"only {len(train_set)} training images; lower --batches")
    pipeline = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    xs, ys = zip(*(train_set[i] for i in range(n)), strict=True)
    tensors = TensorDataset(torch.stack(xs), torch.tensor(ys))
    in_memory = DataLoader(tensors, batch_size=args.batch_size, shuffle=True)
    batches = list(zip(torch.stack(xs).split(args.batch_size), torch.tensor(ys).split(args.batch_size), strict=True))

    loops = {
        "bare": lambda m: bare_loop(m, batches, 1e-3),
        "striate": lambda m: engine_loop(m, pipeline, 1e-3, not args.no_progress),
        "striate-loop": lambda m: engine_loop(m, in_memory, 1e-3, not args.no_progress),
    }
    for name, run in loops.items():  # warm-up: allocator, oneDNN primitives
        run(make_model(args.base_width))
        print(f"warm-up {name} done", file=sys.stderr)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for trial in range(args.trials):
        for name, run in loops.items():
            seconds[name].append(run(make_model(args.base_width)))
        print(
            f"trial {trial + 1}/{args.trials}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()),
            file=sys.stderr,
        )

    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    print(
        f"\nresnet18 (base width {args.base_width}) at 1x64x64, batch {args.batch_size}, {n} images per trial, "
        f"median of {args.trials} trials, {torch.get_num_threads()} torch threads, CPU\n"
    )
    print("| loop | img/s | vs bare |")
    print("| --- | ---: | ---: |")
    for name, value in rate.items():
        overhead = rate["bare"] / value - 1.0
        print(f"| {name} | {value:.1f} | {'' if name == 'bare' else f'{overhead:+.1%} time'} |")


if __name__ == "__main__":
    main()
