"""Export benchmarks: Grad-CAM graph cost, Grad-CAM on onnxruntime vs pytorch_grad_cam, INT8 vs FP32.

    .venv/bin/python bench/export_bench.py            # full run (a few minutes)
    .venv/bin/python bench/export_bench.py --quick    # fewer repetitions

Models: resnet18 at 224x224 (the zoo's, 1000 classes, seeded random weights: timing does not depend
on the weights) exported with training.export into a temporary folder, and the default bundle
(exported/digits/1, trained, with its checkpoint). Every comparison runs both sides in the same
process, interleaved (A, B, A, B, ...), with one compute thread each (onnxruntime intra-op threads
and torch threads), and reports medians, so load from other processes hits both sides alike.

1. explain.onnx (logits + cam) / model.onnx (logits) at batch 1 and 32: target <= 1.15.
2. pytorch_grad_cam.GradCAM on the torch model / explain.onnx, same images and targets, both
   returning input-resolution heatmaps (cv2 resize of the ORT cam included): target >= 3x.
3. INT8 (static QDQ) vs FP32 model.onnx: throughput at batch 1 and 32, and held-out accuracy of the
   default model on the digits test split: target >= 1.8x at <= 1 point accuracy loss.
Results: printed as a table and written to bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from striate.manifest import Manifest  # noqa: E402
from striate.preprocess import imagenet_preprocessing  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.export import export_model  # noqa: E402
from training.export.data import checkpoint_split  # noqa: E402
from training.export.images import real_batch  # noqa: E402
from training.export.quantize import accuracy, quantize_int8  # noqa: E402
from training.models import create_model  # noqa: E402

DEFAULT_CKPT = REPO / "checkpoints" / "digits_default.pt"
DEFAULT_BUNDLE = REPO / "exported" / "digits" / "1"
RESULTS = REPO / "bench" / "results" / "export.json"
IMAGENET = imagenet_preprocessing(224)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median seconds of a() and b(), run alternately after one warm-up call each."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def export_resnet18(root: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, in_chans=3, input_size=224).eval()
    path = export_model(model, [f"class_{i}" for i in range(1000)], IMAGENET, "resnet18", out_root=root)
    return model, path


def gradcam_cost(bundle: Path, images: np.ndarray, batches: list[int], reps: int) -> list[dict]:
    plain, explain = session(bundle / "model.onnx"), session(bundle / "explain.onnx")
    rows = []
    for n in batches:
        x = np.ascontiguousarray(images[:n])
        target = np.full((n, 1), -1, dtype=np.int64)
        t_plain, t_explain = interleaved(
            lambda x=x: plain.run(["logits"], {"image": x}),
            lambda x=x, t=target: explain.run(["logits", "cam_gradcam"], {"image": x, "targets": t}),
            reps,
        )
        rows.append(
            {"batch": n, "plain_ms": 1e3 * t_plain, "explain_ms": 1e3 * t_explain, "ratio": t_explain / t_plain}
        )
    return rows


def gradcam_vs_package(
    model: torch.nn.Module, bundle: Path, images: np.ndarray, batches: list[int], reps: int
) -> list[dict]:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explain = session(bundle / "explain.onnx")
    layer = list(model.stages.values())[-1]
    cam = GradCAM(model, [layer])
    h, w = images.shape[2:]
    rows = []
    try:
        for n in batches:
            x = np.ascontiguousarray(images[:n])
            xt = torch.from_numpy(x)
            with torch.no_grad():
                predicted = model(xt).argmax(1).tolist()
            targets = [ClassifierOutputTarget(t) for t in predicted]

            def ours(x: np.ndarray = x, n: int = n) -> np.ndarray:
                (c,) = explain.run(["cam_gradcam"], {"image": x, "targets": np.full((n, 1), -1, dtype=np.int64)})
                return np.stack([cv2.resize(m[0], (w, h)) for m in c])

            t_ort, t_pkg = interleaved(ours, lambda xt=xt, targets=targets: cam(xt, targets), reps)
            rows.append(
                {
                    "batch": n,
                    "onnxruntime_ms": 1e3 * t_ort,
                    "pytorch_grad_cam_ms": 1e3 * t_pkg,
                    "speedup": t_pkg / t_ort,
                }
            )
    finally:
        cam.activations_and_grads.release()
    return rows


def int8_vs_fp32(
    name: str,
    fp32: Path,
    calibration: np.ndarray,
    images: np.ndarray,
    batches: list[int],
    reps: int,
    heldout: tuple[np.ndarray, np.ndarray] | None,
    tmp: Path,
) -> dict:
    int8 = tmp / f"{name}-int8.onnx"
    quantize_int8(fp32, int8, calibration)
    s32, s8 = session(fp32), session(int8)
    rows = []
    for n in batches:
        x = np.ascontiguousarray(images[:n])
        t32, t8 = interleaved(
            lambda x=x: s32.run(["logits"], {"image": x}), lambda x=x: s8.run(["logits"], {"image": x}), reps
        )
        rows.append({"batch": n, "fp32_img_s": n / t32, "int8_img_s": n / t8, "speedup": t32 / t8})
    out: dict = {"model": name, "throughput": rows}
    if heldout is not None:
        out["accuracy_fp32"] = accuracy(fp32, *heldout)
        out["accuracy_int8"] = accuracy(int8, *heldout)
        out["accuracy_loss_points"] = 100 * (out["accuracy_fp32"] - out["accuracy_int8"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reps = 3 if args.quick else 9
    results: dict = {"threads": 1, "reps": reps, "resnet18_weights": "random (seeded), 1000 classes, 224x224"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        resnet, r18 = export_resnet18(tmp)
        r18_images = real_batch(IMAGENET, 32)
        ckpt = load_checkpoint(DEFAULT_CKPT)
        digits_model = ckpt.build_model()
        digits_manifest = Manifest.load(DEFAULT_BUNDLE)
        test_images, test_targets = checkpoint_split(ckpt, "test")
        d_images = np.concatenate([test_images] * 2)[:32]

        results["gradcam_cost"] = {
            "resnet18_224": gradcam_cost(r18, r18_images, [1, 32], reps),
            "digits_default": gradcam_cost(DEFAULT_BUNDLE, d_images, [1, 32], reps * 3),
        }
        results["gradcam_vs_pytorch_grad_cam"] = {
            "resnet18_224": gradcam_vs_package(resnet, r18, r18_images, [1, 8], reps),
            "digits_default": gradcam_vs_package(digits_model, DEFAULT_BUNDLE, d_images, [1, 32], reps * 3),
        }
        calib, _ = checkpoint_split(ckpt, "train", limit=256)
        results["int8_vs_fp32"] = {
            "resnet18_224": int8_vs_fp32(
                "resnet18", r18 / "model.onnx", real_batch(IMAGENET, 64), r18_images, [1, 32], reps, None, tmp
            ),
            "digits_default": int8_vs_fp32(
                "digits",
                DEFAULT_BUNDLE / digits_manifest.graph,
                calib,
                d_images,
                [1, 32],
                reps * 3,
                (test_images, test_targets),
                tmp,
            ),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    print("\n1. Grad-CAM graph / plain forward (onnxruntime, 1 thread; target <= 1.15)")
    for model, rows in results["gradcam_cost"].items():
        for r in rows:
            print(
                f"  {model:15s} batch {r['batch']:2d}: plain {r['plain_ms']:8.2f} ms  explain "
                f"{r['explain_ms']:8.2f} ms  ratio {r['ratio']:.3f}"
            )
    print("2. pytorch_grad_cam / onnxruntime Grad-CAM (same images, 1 thread; target >= 3x)")
    for model, rows in results["gradcam_vs_pytorch_grad_cam"].items():
        for r in rows:
            print(
                f"  {model:15s} batch {r['batch']:2d}: ort {r['onnxruntime_ms']:8.2f} ms  package "
                f"{r['pytorch_grad_cam_ms']:8.2f} ms  speedup {r['speedup']:.2f}x"
            )
    print("3. INT8 / FP32 (onnxruntime, 1 thread; target >= 1.8x at <= 1 point)")
    for model, res in results["int8_vs_fp32"].items():
        for r in res["throughput"]:
            print(
                f"  {model:15s} batch {r['batch']:2d}: fp32 {r['fp32_img_s']:9.1f} img/s  int8 "
                f"{r['int8_img_s']:9.1f} img/s  speedup {r['speedup']:.2f}x"
            )
        if "accuracy_fp32" in res:
            print(
                f"  {model:15s} held-out accuracy fp32 {res['accuracy_fp32']:.4f}  int8 "
                f"{res['accuracy_int8']:.4f}  loss {res['accuracy_loss_points']:.2f} points"
            )


if __name__ == "__main__":
    raise SystemExit(main())
