"""Service benchmark: JPEG requests through `striate serve` vs raw in-process onnxruntime.

    .venv/bin/python bench/service_bench.py            # full run (a few minutes)
    .venv/bin/python bench/service_bench.py --quick    # fewer requests

What it measures, on a resnet18 224x224 bundle (random weights, exported with training.export into
artifacts/bench-models/) and on the default bundle (exported/digits/1):
- classify at concurrency 1, 8, 32: req/s, p50, p99; against raw onnxruntime on the same core at
  its best batch size (model only, and decode + preprocess + model, which is what the server does);
- explain vs classify request cost (p50 at concurrency 1, throughput at concurrency 8);
- server RSS after 1k and after 10k requests (default bundle).
The server is pinned to one core and the load generator to another (taskset / sched_setaffinity);
onnxruntime gets one intra-op thread, so "raw" and "server" have exactly the same compute.
Results: printed as a table and written to bench/results/service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH_MODELS = REPO / "artifacts" / "bench-models"
DEFAULT_BUNDLE = REPO / "exported" / "digits" / "1"
SERVER_CORE, CLIENT_CORE = 0, 1


# -- bundles and inputs ---------------------------------------------------------------------------
def prepare_models(default_bundle: Path = DEFAULT_BUNDLE) -> list[str]:
    """resnet18 (exported once, random weights) and the default bundle, in one model dir."""
    resnet = BENCH_MODELS / "resnet18" / "1"
    if not (resnet / "manifest.json").exists():
        import torch

        from striate.manifest import Preprocessing
        from training.export.api import export_model
        from training.models.registry import create_model

        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=1000, in_chans=3, input_size=224)
        spec = Preprocessing(
            color_mode="RGB",
            resize_mode="shorter",
            resize_size=(256, 256),
            crop_size=(224, 224),
            interpolation="bilinear",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        )
        shutil.rmtree(BENCH_MODELS / "resnet18", ignore_errors=True)
        export_model(
            model,
            [f"class_{i}" for i in range(1000)],
            spec,
            "resnet18",
            1,
            BENCH_MODELS,
            architecture="resnet18",
            data="random weights (benchmark)",
        )
    names = ["resnet18"]
    for stale in ("digits", "tiny"):
        shutil.rmtree(BENCH_MODELS / stale, ignore_errors=True)
    if (default_bundle / "manifest.json").exists():
        shutil.copytree(default_bundle, BENCH_MODELS / "digits" / "1")
        names.append("digits")
    else:  # stand-in until the default bundle exists: the test suite's tiny 8x8 grayscale CNN
        sys.path.insert(0, str(REPO / "tests"))
        from service_fixtures import build_bundle

        build_bundle(BENCH_MODELS, "tiny", 1)
        names.append("tiny")
    return names


def jpeg_for(model: str) -> bytes:
    from PIL import Image
    from skimage import data as skdata

    if model in ("digits", "tiny"):
        from sklearn.datasets import load_digits

        arr = np.rint(load_digits().images[3] * 255.0 / 16.0).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    else:
        img = Image.fromarray(skdata.astronaut())  # 512x512 RGB photo
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -- raw onnxruntime baseline (run in a child pinned to the server's core) ------------------------
def raw_baseline(bundle: Path, jpeg: bytes, seconds: float) -> dict:
    import onnxruntime as ort

    from striate.manifest import Manifest
    from striate.preprocess import decode_image, preprocess

    manifest = Manifest.load(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / manifest.graph), opts, providers=["CPUExecutionProvider"])
    x1 = preprocess(decode_image(jpeg), manifest.preprocessing)[None]

    def timed(fn, budget: float) -> tuple[float, float]:
        """(median wall seconds, mean CPU seconds) per call."""
        fn()  # warm
        walls, cpu0, start = [], time.process_time(), time.perf_counter()
        while len(walls) < 5 or time.perf_counter() - start < budget:
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
        return float(np.median(walls)), (time.process_time() - cpu0) / len(walls)

    prep, prep_cpu = timed(lambda: preprocess(decode_image(jpeg), manifest.preprocessing), seconds / 4)
    per_batch, cpu_batch = {}, {}
    for bs in (1, 2, 4, 8, 16, 32):
        x = np.repeat(x1, bs, axis=0)
        per_batch[bs], cpu_batch[bs] = timed(
            lambda x=x: session.run([manifest.logits_output], {"image": x}), seconds / 6
        )
    best = min(per_batch, key=lambda b: per_batch[b] / b)
    best_cpu = min(cpu_batch, key=lambda b: cpu_batch[b] / b)
    return {
        "preprocess_ms": prep * 1e3,
        "batch1_ms": per_batch[1] * 1e3,
        "batch1_with_preprocess_ms": (per_batch[1] + prep) * 1e3,
        "best_batch": best,
        "model_only_ips": best / per_batch[best],
        "with_preprocess_ips": 1.0 / (per_batch[best] / best + prep),
        "ips_by_batch": {b: b / t for b, t in per_batch.items()},
        # CPU time is far less sensitive than wall time to other load on a shared machine
        "cpu_ms_per_image_model_only": cpu_batch[best_cpu] / best_cpu * 1e3,
        "cpu_ms_per_image_with_preprocess": (cpu_batch[best_cpu] / best_cpu + prep_cpu) * 1e3,
        "cpu_best_batch": best_cpu,
    }


# -- load generator -------------------------------------------------------------------------------
# A minimal HTTP/1.1 keep-alive client on raw asyncio streams: a Python HTTP library (httpx) costs
# the generator milliseconds per request, which would measure the client instead of the server.
async def _worker(host: str, port: int, request: bytes, jobs, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in jobs:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if head[9:12] != b"200":
                errors.append(int(head[9:12]))
    finally:
        writer.close()


async def _load(url: str, body: bytes, ctype: str, concurrency: int, total: int) -> dict:
    parsed = urlsplit(url)
    request = (
        f"POST {parsed.path}?{parsed.query} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    warm = iter(range(2 * concurrency))
    await asyncio.gather(
        *(_worker(parsed.hostname, parsed.port, request, warm, [], errors) for _ in range(concurrency))
    )
    jobs = iter(range(total))
    start = time.perf_counter()
    await asyncio.gather(
        *(_worker(parsed.hostname, parsed.port, request, jobs, latencies, errors) for _ in range(concurrency))
    )
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": len(errors),
        "rps": total / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


SERVER_PID: int | None = None  # set once the server runs: its CPU time is sampled around each load


def load(url: str, body: bytes, concurrency: int, total: int, ctype: str = "image/jpeg") -> dict:
    cpu0 = cpu_seconds(SERVER_PID) if SERVER_PID else None
    result = asyncio.run(_load(url, body, ctype, concurrency, total))
    if cpu0 is not None:
        # includes the warm-up requests (2 per connection)
        result["server_cpu_ms_per_request"] = (cpu_seconds(SERVER_PID) - cpu0) / (total + 2 * concurrency) * 1e3
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")} | {
        "STRIATE_INTRA_OP_THREADS": "1",
        "STRIATE_INTER_OP_THREADS": "1",
        "STRIATE_PREPROCESS_THREADS": "2",
        "STRIATE_MAX_BATCH_SIZE": "32",
        "STRIATE_MAX_BATCH_DELAY_MS": "5",
        "PYTHONPATH": str(REPO),
    }
    cmd = [
        "taskset",
        "-c",
        str(SERVER_CORE),
        sys.executable,
        "-m",
        "striate.cli",
        "serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--port", type=int, default=18731)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service.json")
    parser.add_argument("--default-bundle", type=Path, default=DEFAULT_BUNDLE, help="default: exported/digits/1")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # child mode: raw baseline of a bundle
    parser.add_argument("--jpeg", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_baseline(args.raw, args.jpeg.read_bytes(), 6.0 if not args.quick else 2.0)))
        return 0
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 cores: one for the server, one for the load generator")
    scale = 0.25 if args.quick else 1.0
    names = prepare_models(args.default_bundle)
    os.sched_setaffinity(0, {CLIENT_CORE})
    results: dict = {
        "cores": {"server": SERVER_CORE, "client": CLIENT_CORE},
        "load_average_at_start": os.getloadavg(),
        "models": {},
    }
    tmp = REPO / "artifacts" / "bench-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        body = jpeg_for(name)
        (tmp / f"{name}.jpg").write_bytes(body)
        raw = subprocess.run(
            [
                "taskset",
                "-c",
                str(SERVER_CORE),
                sys.executable,
                __file__,
                "--raw",
                str(BENCH_MODELS / name / "1"),
                "--jpeg",
                str(tmp / f"{name}.jpg"),
                *(["--quick"] if args.quick else []),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        results["models"][name] = {"raw": json.loads(raw.stdout.strip().splitlines()[-1]), "classify": []}
    global SERVER_PID
    proc = start_server(BENCH_MODELS, args.port)
    SERVER_PID = proc.pid
    base = f"http://127.0.0.1:{args.port}/v1/models"
    try:
        for name in names:
            body = jpeg_for(name)
            heavy = name == "resnet18"
            res = results["models"][name]
            for c in (1, 8, 32):
                n = int((60 if c == 1 else 8 * c) * scale) if heavy else int(3000 * scale)
                res["classify"].append(load(f"{base}/{name}/classify", body, c, max(n, c)))
            n1 = int((60 if heavy else 1000) * scale)
            n8 = int((96 if heavy else 2000) * scale)
            cl1 = load(f"{base}/{name}/classify", body, 1, n1)
            ex1 = load(f"{base}/{name}/explain", body, 1, n1)
            cl8 = load(f"{base}/{name}/classify", body, 8, n8)
            ex8 = load(f"{base}/{name}/explain", body, 8, n8)
            res["explain_vs_classify"] = {
                "p50_ratio_c1": ex1["p50_ms"] / cl1["p50_ms"],
                "throughput_cost_ratio_c8": cl8["rps"] / ex8["rps"],
                "cpu_cost_ratio_c8": ex8["server_cpu_ms_per_request"] / cl8["server_cpu_ms_per_request"],
                "classify_c1": cl1,
                "explain_c1": ex1,
                "classify_c8": cl8,
                "explain_c8": ex8,
            }
        rss_model = names[-1]  # the default bundle (or its stand-in)
        body = jpeg_for(rss_model)
        n_first, n_total = (1000, 10000)
        load(f"{base}/{rss_model}/classify", body, 8, n_first)
        after_first = rss_mb(proc.pid)
        load(f"{base}/{rss_model}/classify", body, 8, n_total - n_first)
        after_all = rss_mb(proc.pid)
        results["rss"] = {
            "model": rss_model,
            "after_requests": [n_first, n_total],
            "rss_mb": [after_first, after_all],
            "growth": after_all / after_first - 1.0,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    results["load_average_at_end"] = os.getloadavg()
    results["default_bundle"] = str(args.default_bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    report(results)
    return 0


def report(results: dict) -> None:
    for name, res in results["models"].items():
        raw = res["raw"]
        print(
            f"\n## {name}: raw onnxruntime on 1 core: batch-1 {raw['batch1_ms']:.2f} ms "
            f"(+ decode/preprocess {raw['preprocess_ms']:.2f} ms); best batch {raw['best_batch']}: "
            f"{raw['model_only_ips']:.1f} img/s model only, "
            f"{raw['with_preprocess_ips']:.1f} img/s with preprocessing"
        )
        print(
            f"raw CPU per image at its best batch ({raw['cpu_best_batch']}): "
            f"{raw['cpu_ms_per_image_model_only']:.2f} ms model only, "
            f"{raw['cpu_ms_per_image_with_preprocess']:.2f} ms with decode + preprocess"
        )
        print(
            "| concurrency | req/s | p50 ms | p99 ms | req/s vs raw (model only / with preprocess) "
            "| server CPU ms/req | CPU efficiency vs raw (model only / with preprocess) | errors |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in res["classify"]:
            cpu = row["server_cpu_ms_per_request"]
            print(
                f"| {row['concurrency']} | {row['rps']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['rps'] / raw['model_only_ips']:.2f} / {row['rps'] / raw['with_preprocess_ips']:.2f} | "
                f"{cpu:.2f} | {raw['cpu_ms_per_image_model_only'] / cpu:.2f} / "
                f"{raw['cpu_ms_per_image_with_preprocess'] / cpu:.2f} | {row['errors']} |"
            )
        c1 = res["classify"][0]
        print(
            f"p50 at c=1 minus raw batch-1: {c1['p50_ms'] - raw['batch1_ms']:+.2f} ms (model only), "
            f"{c1['p50_ms'] - raw['batch1_with_preprocess_ms']:+.2f} ms (with preprocess)"
        )
        ev = res["explain_vs_classify"]
        print(
            f"explain/classify cost: p50 ratio at c=1 {ev['p50_ratio_c1']:.3f}, "
            f"throughput cost ratio at c=8 {ev['throughput_cost_ratio_c8']:.3f}, "
            f"server CPU per request ratio at c=8 {ev['cpu_cost_ratio_c8']:.3f}"
        )
    print(
        f"\nload average (1, 5, 15 min): start {results['load_average_at_start']}, end {results['load_average_at_end']}"
    )
    rss = results["rss"]
    print(
        f"\nRSS ({rss['model']}): {rss['rss_mb'][0]:.1f} MB after {rss['after_requests'][0]} requests, "
        f"{rss['rss_mb'][1]:.1f} MB after {rss['after_requests'][1]}: growth {rss['growth'] * 100:+.1f}%"
    )


if __name__ == "__main__":
    sys.exit(main())
