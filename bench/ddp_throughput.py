"""DDP on CPU: training throughput of 2 processes (gloo on loopback) vs 1 process.

    .venv/bin/python bench/ddp_throughput.py            # resnet18 and efficientnet_lite0, 64 px
    .venv/bin/python bench/ddp_throughput.py --quick    # fewer steps

Each configuration runs in fresh processes started with torch.multiprocessing, through the same
`training.distributed` helpers the engine uses (init_distributed, wrap_ddp), on synthetic batches
(throughput does not depend on the pixels): forward, cross-entropy, backward (with DDP's gradient
all-reduce), AdamW step. Per-process batch 32; the global batch of 2 processes is therefore 64.
- 1 proc x 1 thread: the baseline;
- 1 proc x 2 threads: the same two cores used by intra-op threading instead;
- 2 procs x 1 thread (DDP): data parallel.
Reported: images/s (median of per-step rates after warm-up) and the ratios to the baseline.
Results: printed and written to bench/results/ddp_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "ddp_throughput.json"
BATCH = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, arch: str, size: int, steps: int, out: str) -> None:
    if world > 1:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    torch.set_num_threads(threads)
    from training import distributed as D
    from training.models import create_model

    info = D.init_distributed(device="cpu")
    torch.manual_seed(rank)
    model = D.wrap_ddp(create_model(arch, num_classes=10, input_size=size), info)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(BATCH, 3, size, size)
    y = torch.randint(0, 10, (BATCH,))
    warmup = 2
    times = []
    for step in range(warmup + steps):
        D.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        D.barrier()  # a step ends when every rank is done
        if step >= warmup:
            times.append(time.perf_counter() - start)
    if info.is_main:
        Path(out).write_text(json.dumps(times))
    D.cleanup()


def measure(procs: int, threads: int, arch: str, size: int, steps: int) -> float:
    """Global images/s: procs * BATCH / median step time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_worker, args=(procs, _free_port(), threads, arch, size, steps, out), nprocs=procs, join=True)
        times = json.loads(Path(out).read_text())
    return procs * BATCH / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--archs", default="tv_resnet18,efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="repeat the three configurations, interleaved")
    args = parser.parse_args()
    steps = 4 if args.quick else 10
    configs = [("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread (DDP)", 2, 1)]
    rows = []
    for arch in args.archs.split(","):
        rates: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        for _ in range(args.rounds):  # interleaved, so background load hits every configuration alike
            for name, procs, threads in configs:
                rates[name].append(measure(procs, threads, arch, args.size, steps))
        base = statistics.median(rates[configs[0][0]])
        for name, _, _ in configs:
            rate = statistics.median(rates[name])
            rows.append(
                {
                    "arch": arch,
                    "config": name,
                    "images_per_s": round(rate, 1),
                    "ratio_vs_1x1": round(rate / base, 2),
                    "runs": [round(r, 1) for r in rates[name]],
                }
            )
    print(f"\nper-process batch {BATCH}, {args.size}x{args.size} RGB, {steps} timed steps, {os.cpu_count()} CPUs\n")
    print(f"{'arch':<18} {'configuration':<26} {'images/s':>9} {'vs 1x1':>7}")
    for r in rows:
        print(f"{r['arch']:<18} {r['config']:<26} {r['images_per_s']:>9.1f} {r['ratio_vs_1x1']:>7.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"batch_per_process": BATCH, "size": args.size, "steps": steps, "cpus": os.cpu_count(), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"\n-> {RESULTS}")


if __name__ == "__main__":
    main()
