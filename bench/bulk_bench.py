"""Bulk embeddings: images/s of the local engine, Ray on this machine, and raw onnxruntime.

Inputs: N JPEG files (default 10,000) cut at random from scikit-image's bundled photos, 256x256,
written once to artifacts/bulk-images/. Model: resnet18 at 224 (random weights, exported once by
bench/service_bench.py's `prepare_models` into artifacts/bench-models/). Every contender decodes and
preprocesses each file with `striate.preprocess` and runs the same bundle:

- raw, 1 process: read + decode + preprocess + onnxruntime in batches of 32, onnxruntime on every core;
- raw, N processes: the same split over N processes with one onnxruntime thread each (the best a
  hand-written script gets from this machine without a framework);
- local engine: `striate features BUNDLE --engine local` (one process, every core);
- ray engine: `striate features BUNDLE --engine ray` on a local Ray with N CPUs (actor pool).

Raw = the faster of the two raw runs; each engine is reported as images/s and as a ratio to raw.
Run: `python bench/bulk_bench.py [--images 10000]`; results in bench/results/bulk.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "artifacts" / "bulk-images"
OUT = REPO / "artifacts" / "bulk-out"
RESULTS = REPO / "bench" / "results" / "bulk.json"
BATCH = 32


def make_images(n: int) -> list[Path]:
    from PIL import Image
    from skimage import data as skdata

    existing = sorted(IMAGES.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    shutil.rmtree(IMAGES, ignore_errors=True)
    IMAGES.mkdir(parents=True)
    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.hubble_deep_field()]
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - 256 + 1)
        x = rng.integers(0, photo.shape[1] - 256 + 1)
        Image.fromarray(photo[y : y + 256, x : x + 256]).save(IMAGES / f"{i:06d}.jpg", quality=90)
    return sorted(IMAGES.glob("*.jpg"))


def _raw_worker(bundle: str, paths: list[str], threads: int) -> int:
    import onnxruntime as ort

    from striate.manifest import Manifest
    from striate.preprocess import decode_image, preprocess

    manifest = Manifest.load(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(bundle) / manifest.graph), opts, providers=["CPUExecutionProvider"])
    name = manifest.input.name
    done = 0
    for start in range(0, len(paths), BATCH):
        batch = [
            preprocess(decode_image(Path(p).read_bytes()), manifest.preprocessing) for p in paths[start : start + BATCH]
        ]
        session.run(["embedding"], {name: np.stack(batch)})
        done += len(batch)
    return done


def raw(bundle: str, paths: list[str], processes: int) -> float:
    start = time.perf_counter()
    if processes == 1:
        _raw_worker(bundle, paths, threads=0)
    else:
        shards = [paths[i::processes] for i in range(processes)]
        with mp.get_context("spawn").Pool(processes) as pool:
            pool.starmap(_raw_worker, [(bundle, shard, 1) for shard in shards])
    return len(paths) / (time.perf_counter() - start)


def engine(bundle: str, name: str, n: int, rows_per_part: int) -> float:
    from service.bulk import inputs
    from service.bulk.embedder import EmbedOptions
    from service.bulk.engines import JobOptions, embed_images

    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    table = inputs.from_folder(IMAGES).slice(0, n)
    options = EmbedOptions(bundle=bundle, layers=("embedding",), top_k=5)
    job = JobOptions(out=str(out), batch_size=BATCH, rows_per_part=rows_per_part, progress=False)
    start = time.perf_counter()
    summary = embed_images(table, options, job, engine=name)
    elapsed = time.perf_counter() - start
    assert summary.rows == n and summary.errors == 0, summary
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument(
        "--skip-single", action="store_true", help="skip the raw 1-process run (slower than N processes here)"
    )
    parser.add_argument("--skip-local", action="store_true", help="skip the local engine")
    parser.add_argument("--rows-per-part", type=int, default=1024, help="rows per Parquet part / Ray block")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from service_bench import BENCH_MODELS, prepare_models

    prepare_models()
    bundle = str(BENCH_MODELS / "resnet18" / "1")
    cores = len(os.sched_getaffinity(0))
    paths = [str(p) for p in make_images(args.images)]
    print(f"{len(paths)} images, resnet18 224, {cores} cores", flush=True)

    import ray

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict[str, float] = {}
    # Interleaved order so that a change in the machine's load touches every contender alike.
    for label, run in (
        ("raw_1_process", lambda: raw(bundle, paths, 1)),
        ("local_engine", lambda: engine(bundle, "local", len(paths), args.rows_per_part)),
        (f"raw_{cores}_processes", lambda: raw(bundle, paths, cores)),
        ("ray_engine", lambda: engine(bundle, "ray", len(paths), args.rows_per_part)),
    ):
        if (label == "raw_1_process" and args.skip_single) or (label == "local_engine" and args.skip_local):
            continue
        results[label] = run()
        print(f"{label:>20}: {results[label]:7.1f} images/s", flush=True)
    ray.shutdown()
    best_raw = max(v for k, v in results.items() if k.startswith("raw_"))
    ratios = {k: round(v / best_raw, 3) for k, v in results.items()}
    print("ratio to the best raw run:", json.dumps(ratios))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"images": len(paths), "cores": cores, "images_per_s": results, "ratio": ratios}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
