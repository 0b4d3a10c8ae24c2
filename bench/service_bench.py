"""Service benchmark: `striate serve` against raw onnxruntime, the HTTP floor and a naive server.

    .venv/bin/python bench/service_bench.py            # full run (about 4 minutes)
    .venv/bin/python bench/service_bench.py --quick    # fewer requests (about 2 minutes)

One run, side by side, on the default bundle (exported/digits/1, 1x32x32) and resnet18 at 224x224
(random weights, exported into artifacts/bench-models/), JPEG bodies, classify at concurrency 1, 16
and 64. The servers are pinned to one core and the load generator to the other; onnxruntime gets
one intra-op thread, so every row has the same compute. Rows:
- raw: onnxruntime in-process at its best batch size, with decode + preprocess (images/s);
- http floor: a FastAPI hello-world reading the body, on the same stack (uvicorn, httptools, uvloop);
- limit: what any server on this stack could do: 1 / (1 / floor + 1 / raw);
- striate: `striate serve` (one worker); naive: FastAPI + onnxruntime, one image per call.
Each server row gives req/s, p50, p99, its ratio to raw and to the limit, and its CPU per request.
Then every core, with load from wrk (scripts/bench_tools.sh installs it; the section is skipped
without it): digits at concurrency 64 with one worker per core vs one worker on one core, and
resnet18 at concurrency 1 with one intra-op thread vs one per core; and (full run) server RSS
after 1k and 10k requests. Results: printed as tables and written to bench/results/service.json.
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
ALL_CORES = f"0-{(os.cpu_count() or 2) - 1}"
WRK_SCRIPT = REPO / "bench" / "wrk_post.lua"
CONCURRENCY = (1, 16, 64)


# -- bundles and inputs ---------------------------------------------------------------------------
def prepare_models(default_bundle: Path = DEFAULT_BUNDLE) -> list[str]:
    """resnet18 (exported once, random weights) and the default bundle, in one model dir."""
    resnet = BENCH_MODELS / "resnet18" / "1"
    if not (resnet / "manifest.json").exists():
        import torch

        from striate.preprocess import imagenet_preprocessing
        from training.export.api import export_model
        from training.models.registry import create_model

        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=1000, in_chans=3, input_size=224)
        spec = imagenet_preprocessing(224)
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
    """User + system CPU time of a process and its children now alive (workers), from /proc."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_ready(proc: subprocess.Popen, url: str) -> subprocess.Popen:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited at start-up: {proc.args}")
        try:
            httpx.get(url)  # any answer: listening (striate listens once its models are loaded)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        time.sleep(0.5)
        if proc.poll() is None:  # still alive: the answer was its own, not a leftover's on that port
            return proc
    proc.terminate()
    raise SystemExit(f"server did not become ready: {proc.args}")


def start_server(model_dir: Path, port: int, workers: int = 1, intra: int = 1, core: int | None = SERVER_CORE):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")} | {
        "STRIATE_WORKERS": str(workers),
        "STRIATE_INTRA_OP_THREADS": str(intra),
        "STRIATE_INTER_OP_THREADS": "1",
        "STRIATE_MAX_BATCH_SIZE": "32",
        "STRIATE_MAX_BATCH_DELAY_MS": "5",
        "PYTHONPATH": str(REPO),
    }
    pin = ["taskset", "-c", str(core) if core is not None else ALL_CORES]  # children inherit our pinning
    cmd = [sys.executable, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen([*pin, *cmd, "--log-level", "warning"], env=env, cwd=REPO)
    return _wait_ready(proc, f"http://127.0.0.1:{port}/openapi.json")


def start_reference(kind: str, port: int, bundle: Path | None = None) -> subprocess.Popen:
    cmd = ["taskset", "-c", str(SERVER_CORE), sys.executable, str(REPO / "bench" / "reference_servers.py"), kind]
    cmd += ["--port", str(port), *(["--bundle", str(bundle)] if bundle else [])]
    proc = subprocess.Popen(cmd, env=os.environ | {"PYTHONPATH": str(REPO)}, cwd=REPO)
    return _wait_ready(proc, f"http://127.0.0.1:{port}/openapi.json")


def measure(proc: subprocess.Popen, url: str, body: bytes, concurrency: int, total: int) -> dict:
    global SERVER_PID
    SERVER_PID = proc.pid
    return load(url, body, concurrency, max(total, concurrency))


def requests_for(name: str, concurrency: int, scale: float) -> int:
    if name == "resnet18":  # about 25 images/s on one core
        return int({1: 40, 16: 96, 64: 192}[concurrency] * scale)
    return int((1000 if concurrency == 1 else 3000) * scale)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, no RSS run (a smoke run)")
    parser.add_argument("--port", type=int, default=18731, help="first of the ports the servers use")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service.json")
    parser.add_argument("--default-bundle", type=Path, default=DEFAULT_BUNDLE, help="default: exported/digits/1")
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # child mode: raw baseline of a bundle
    parser.add_argument("--jpeg", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_baseline(args.raw, args.jpeg.read_bytes(), 6.0 if not args.quick else 2.0)))
        return 0
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 cores: one for the servers, one for the load generator")
    scale = 0.25 if args.quick else 1.0
    names = prepare_models(args.default_bundle)
    os.sched_setaffinity(0, {CLIENT_CORE})
    results: dict = {
        "cores": {"server": SERVER_CORE, "client": CLIENT_CORE},
        "load_average_at_start": os.getloadavg(),
        "quick": args.quick,
        "models": {},
    }
    tmp = REPO / "artifacts" / "bench-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in names:
        (tmp / f"{name}.jpg").write_bytes(jpeg_for(name))
        pin = ["taskset", "-c", str(SERVER_CORE)]
        child = [sys.executable, __file__, "--raw", str(BENCH_MODELS / name / "1"), "--jpeg", str(tmp / f"{name}.jpg")]
        raw = subprocess.run(
            [*pin, *child, *(["--quick"] if args.quick else [])],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        results["models"][name] = {"raw": json.loads(raw.stdout.strip().splitlines()[-1]), "rows": {}}
    port = iter(range(args.port, args.port + 20))
    servers: dict[str, subprocess.Popen] = {}
    try:
        servers["http floor"] = start_reference("hello", next(port))
        servers["striate"] = start_server(BENCH_MODELS, next(port))
        for name in names:
            servers[f"naive {name}"] = start_reference("naive", next(port), BENCH_MODELS / name / "1")
        urls = {k: f"http://127.0.0.1:{p.args[p.args.index('--port') + 1]}/v1/models" for k, p in servers.items()}
        for name in names:
            body, res = jpeg_for(name), results["models"][name]
            for c in CONCURRENCY:
                n = requests_for(name, c, scale)
                for kind in ("http floor", "striate", f"naive {name}"):
                    row = measure(servers[kind], f"{urls[kind]}/{name}/classify", body, c, n)
                    res["rows"].setdefault(kind.split()[0] if kind.startswith("naive") else kind, []).append(row)
        results["cores_section"] = every_core(urls["striate"], next(port), scale)
        if not args.quick:
            results["rss"] = rss_run(servers["striate"], urls["striate"], names[-1])
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    results["load_average_at_end"] = os.getloadavg()
    results["default_bundle"] = str(args.default_bundle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwrote {args.out}")
    return 0


def wrk(url: str, body: Path, concurrency: int, seconds: float, cores: str) -> dict:
    """wrk (a C load generator: a few microseconds of CPU per request) on `cores`, one thread."""
    cmd = ["taskset", "-c", cores, "wrk", "-t1", f"-c{concurrency}", f"-d{max(seconds, 2.0):.0f}s", "--latency"]
    done = subprocess.run(
        [*cmd, "-s", str(WRK_SCRIPT), url],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"WRK_BODY": str(body), "WRK_TYPE": "image/jpeg"},
    )
    out = done.stdout

    def ms(percent: int) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "concurrency": concurrency,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "errors": int(bad.group(1)) if bad else 0,
    }


def every_core(one_url: str, port: int, scale: float) -> dict:
    """Digits at c=64: one worker per core (on every core) vs one worker on one core; resnet18 at c=1:
    one intra-op thread vs one per core. The load comes from wrk: this Python client would itself
    take a large share of the cores the workers need (the first version of this section measured
    it, and 0.90x)."""
    cores = os.cpu_count() or 2
    out: dict = {"cores": cores}
    if shutil.which("wrk") is None:
        out["skipped"] = "wrk is not installed (scripts/bench_tools.sh installs it)"
        return out
    tmp = REPO / "artifacts" / "bench-tmp"
    digits, photo = tmp / "digits.jpg", tmp / "resnet18.jpg"
    digits.write_bytes(jpeg_for("digits"))
    photo.write_bytes(jpeg_for("resnet18"))
    seconds = 10 * scale
    wrk(f"{one_url}/digits/classify", digits, 64, 2, str(CLIENT_CORE))  # warm
    out["digits_c64_one_worker_one_core"] = wrk(f"{one_url}/digits/classify", digits, 64, seconds, str(CLIENT_CORE))
    for key, workers, intra, model, body, c in (
        ("digits_c64_worker_per_core", cores, 1, "digits", digits, 64),
        ("resnet18_c1_one_thread", 1, 1, "resnet18", photo, 1),
        ("resnet18_c1_thread_per_core", 1, cores, "resnet18", photo, 1),
    ):
        server = start_server(BENCH_MODELS, port, workers=workers, intra=intra, core=None)
        try:
            url = f"http://127.0.0.1:{port}/v1/models/{model}/classify"
            wrk(url, body, c, 2, ALL_CORES)  # warm
            out[key] = wrk(url, body, c, seconds, ALL_CORES)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return out


def rss_run(proc: subprocess.Popen, url: str, model: str) -> dict:
    body = jpeg_for(model)
    measure(proc, f"{url}/{model}/classify", body, 8, 1000)
    after_first = rss_mb(proc.pid)
    measure(proc, f"{url}/{model}/classify", body, 8, 9000)
    after_all = rss_mb(proc.pid)
    return {"model": model, "after_requests": [1000, 10000], "rss_mb": [after_first, after_all]}


def report(results: dict) -> None:
    print(
        f"\nload average (1, 5, 15 min): start {results['load_average_at_start']}, end {results['load_average_at_end']}"
    )
    for name, res in results["models"].items():
        raw = res["raw"]
        print(
            f"\n## {name}: raw onnxruntime on 1 core with decode: {raw['with_preprocess_ips']:.0f} img/s at batch "
            f"{raw['best_batch']} (model {raw['model_only_ips']:.0f} img/s, decode {raw['preprocess_ms']:.2f} ms); "
            f"batch-1 with decode {raw['batch1_with_preprocess_ms']:.2f} ms"
        )
        print(
            "| concurrency | row | req/s | p50 ms | p99 ms | req/s /raw | req/s /limit | server CPU ms/req "
            "| CPU /raw | CPU /limit | errors |"
        )
        print("| --- " * 11 + "|")
        raw_ips, raw_cpu = raw["with_preprocess_ips"], raw["cpu_ms_per_image_with_preprocess"]
        for i, c in enumerate(CONCURRENCY):
            floor = res["rows"]["http floor"][i]
            limit = 1.0 / (1.0 / floor["rps"] + 1.0 / raw_ips)
            limit_cpu = floor["server_cpu_ms_per_request"] + raw_cpu
            print(f"| {c} | raw | {raw_ips:.1f} | | | 1.00 | | {raw_cpu:.2f} | 1.00 | | |")
            print(f"| {c} | limit | {limit:.1f} | | | {limit / raw_ips:.2f} | 1.00 | {limit_cpu:.2f} | | 1.00 | |")
            for kind in ("http floor", "striate", "naive"):
                row = res["rows"][kind][i]
                cpu = row["server_cpu_ms_per_request"]
                if kind == "http floor":
                    ratios = "| | | " + f"{cpu:.2f} | | |"
                else:
                    ratios = (
                        f"| {row['rps'] / raw_ips:.2f} | {row['rps'] / limit:.2f} | {cpu:.2f} "
                        f"| {raw_cpu / cpu:.2f} | {limit_cpu / cpu:.2f} |"
                    )
                print(
                    f"| {c} | {kind} | {row['rps']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                    f"{ratios} {row['errors']} |"
                )
    cs = results["cores_section"]
    if "skipped" in cs:
        print(f"\n## every core ({cs['cores']}): skipped: {cs['skipped']}")
    else:
        one, many = cs["digits_c64_one_worker_one_core"], cs["digits_c64_worker_per_core"]
        scaling = many["rps"] / one["rps"]
        print(
            f"\n## every core ({cs['cores']}; load from wrk): digits c=64: one worker on one core {one['rps']:.0f} "
            f"req/s (wrk on another core); a worker per core {many['rps']:.0f} req/s (wrk sharing the cores): "
            f"{scaling:.2f}x = {scaling / cs['cores']:.2f} N (target >= 0.8 N)"
        )
        t1, tn = cs["resnet18_c1_one_thread"], cs["resnet18_c1_thread_per_core"]
        print(
            f"resnet18 c=1 p50: one intra-op thread {t1['p50_ms']:.1f} ms, {cs['cores']} threads {tn['p50_ms']:.1f} ms "
            f"({t1['p50_ms'] / tn['p50_ms']:.2f}x faster)"
        )
    if "rss" in results:
        rss = results["rss"]
        print(f"RSS ({rss['model']}): {rss['rss_mb'][0]:.1f} MB after 1k requests, {rss['rss_mb'][1]:.1f} MB after 10k")


if __name__ == "__main__":
    sys.exit(main())
