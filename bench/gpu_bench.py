"""GPU benchmark: Striate's CUDA path (I/O binding, reused input buffers; optionally the float16
graph) against raw onnxruntime on the same GPU, at batch 1..256, outputs checked against the CPU.

    .venv/bin/python bench/gpu_bench.py                 # digits default + resnet18 224 (about 2 minutes)
    .venv/bin/python bench/gpu_bench.py --seconds 0.2   # shorter

On a machine whose onnxruntime has no CUDA provider it says so and exits with status 2.
For each bundle and batch size: raw `session.run` (numpy in, numpy out), Striate's `Graph.run`
(the service's runtime: IOBinding), and the same on the float16 graph (`striate export --fp16`):
images/s and median latency per call; then the max |logit difference| and top-1 agreement of each
GPU path against onnxruntime on the CPU. Results: a table, and bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def cuda_or_exit() -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        print(
            f"gpu_bench: no CUDA here: this onnxruntime ({ort.__version__}) has {available}. "
            "Run it on a machine with an NVIDIA GPU and `pip install onnxruntime-gpu` (CUDA 12/13, cuDNN 9).",
            file=sys.stderr,
        )
        raise SystemExit(2)


def timed(fn, seconds: float) -> float:
    """Median wall seconds per call (after two warm-up calls)."""
    fn()
    fn()
    walls, start = [], time.perf_counter()
    while len(walls) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return float(np.median(walls))


def bench_bundle(bundle: Path, seconds: float, fp16: bool, device: str = "cuda") -> dict:
    import onnxruntime as ort

    from service.runtime import Graph
    from service.settings import Settings
    from striate.manifest import Manifest

    manifest = Manifest.load(bundle)
    spec, logits = manifest.input, manifest.logits_output
    graph_path = bundle / manifest.graph
    settings = Settings(device=device, model_dir=bundle.parent.parent)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    raw = ort.InferenceSession(str(graph_path), providers=[provider])
    ours = Graph(graph_path, settings, io_binding=True)  # what the service does on CUDA by default
    paths = {
        "raw": lambda feeds: raw.run([logits], feeds)[0],
        "striate": lambda feeds: ours.run(feeds, [logits])[logits],
    }
    half_dir = None
    if fp16:
        from training.export.fp16 import convert_bundle

        half_dir = Path(tempfile.mkdtemp()) / manifest.name / str(manifest.version)
        shutil.copytree(bundle, half_dir)
        convert_bundle(half_dir)
        half = Graph(half_dir / manifest.graph, settings, io_binding=True)
        paths["striate_fp16"] = lambda feeds: half.run(feeds, [logits])[logits]
    cpu = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    result: dict = {"bundle": str(bundle), "provider": ours.provider, "rows": [], "check": {}}
    for batch in BATCHES:
        x = rng.standard_normal((batch, spec.channels, spec.height, spec.width)).astype(np.float32)
        feeds = {spec.name: x}
        row = {"batch": batch}
        for name, run in paths.items():
            seconds_per_call = timed(lambda run=run, feeds=feeds: run(feeds), seconds)
            row[name] = {"ips": batch / seconds_per_call, "latency_ms": seconds_per_call * 1e3}
        result["rows"].append(row)
    x = rng.standard_normal((32, spec.channels, spec.height, spec.width)).astype(np.float32)
    reference = cpu.run([logits], {spec.name: x})[0]
    for name, run in paths.items():
        got = run({spec.name: x})
        result["check"][name] = {
            "max_abs_diff_logits": float(np.abs(got - reference).max()),
            "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
        }
    if half_dir is not None:
        shutil.rmtree(half_dir.parent.parent, ignore_errors=True)
    return result


def report(name: str, res: dict) -> None:
    paths = [k for k in res["rows"][0] if k != "batch"]
    print(f"\n## {name} on {res['provider']}: images/s (median ms per call); ratio to raw")
    print("| batch | " + " | ".join(paths) + " | " + " | ".join(f"{p}/raw" for p in paths[1:]) + " |")
    print("| --- " * (1 + 2 * len(paths) - 1) + "|")
    for row in res["rows"]:
        cells = [f"{row[p]['ips']:.0f} ({row[p]['latency_ms']:.2f})" for p in paths]
        ratios = [f"{row[p]['ips'] / row['raw']['ips']:.2f}" for p in paths[1:]]
        print(f"| {row['batch']} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for p, c in res["check"].items():
        print(f"{p} vs CPU: max |logit diff| {c['max_abs_diff_logits']:.3g}, top-1 agreement {c['top1_agreement']:.0%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per batch size and path")
    parser.add_argument("--no-fp16", action="store_true", help="skip the float16 graph")
    parser.add_argument("--bundle", type=Path, action="append", help="bundles (default: digits and resnet18)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the whole script on the CPU provider (a smoke run)")
    args = parser.parse_args()
    if not args.cpu_dry_run:
        cuda_or_exit()
    bundles = args.bundle
    if not bundles:
        sys.path.insert(0, str(REPO / "bench"))
        from service_bench import BENCH_MODELS, prepare_models

        bundles = [BENCH_MODELS / name / "1" for name in prepare_models()]
    results = {}
    for bundle in bundles:
        device = "cpu" if args.cpu_dry_run else "cuda"
        results[bundle.parent.name] = res = bench_bundle(bundle, args.seconds, not args.no_fp16, device)
        report(bundle.parent.name, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
