"""Explanation benchmark: every method's cost against classify, against pytorch-grad-cam, and how
faithful each method is on real images.

    PYTHONPATH=. .venv/bin/python bench/explain_bench.py            # full run (~15 min on one core)
    PYTHONPATH=. .venv/bin/python bench/explain_bench.py --quick    # fewer repeats and images

1. Cost, CPU, one thread (onnxruntime and torch alike), one image per call, median of repeats:
   - per gradient method: explain.onnx pruned to that method, as the service runs it (one
     target) / model.onnx (classify), and pytorch-grad-cam's class of the same name on torch
     for the same map / that graph;
   - Score-CAM: our passes through onnxruntime in chunks of 32 / pytorch-grad-cam's ScoreCAM
     (its batch size set to 32 as well);
   - occlusion, RISE, Eigen-CAM: their cost in classify calls.
   On resnet18 at 224 px (random weights, exported with training.export into artifacts/), on
   the default bundle exported/digits/1 and, with --lite0, on the ImageNet EfficientNet-Lite0.
2. Faithfulness, methods x models: ROAD (LeRF - MoRF) / 2 and deletion / insertion AUC,
   explaining the predicted class, on the digits test split (default bundle) and on the
   scikit-image photos through the ImageNet EfficientNet-Lite0 bundle (exported into artifacts/).
Results: printed as tables and written to bench/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "explain.json"
BENCH_MODELS = REPO / "artifacts" / "bench-models"
DEFAULT_BUNDLE = REPO / "exported" / "digits" / "1"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat")


def _session(path: Path | bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )


def _method_session(bundle: Path, outputs: list[str]):
    """The explain graph pruned to one method's outputs, as the service runs it."""
    from service.explain_graphs import prune

    return _session(prune(bundle, outputs).SerializeToString())


def _interleaved_s(first, second, repeats: int) -> tuple[float, float]:
    """Medians of `first` and `second` timed alternately (a loaded machine slows both alike)."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def _median_s(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resnet18_bundle() -> Path:
    """A full-size resnet18 (ImageNet-sized input, random weights), exported once into artifacts/."""
    import torch

    from striate.manifest import Preprocessing
    from training.export import export_model
    from training.models import create_model

    path = BENCH_MODELS / "explain-resnet18" / "1"
    if not (path / "manifest.json").exists():
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=10, in_chans=3, input_size=224)
        spec = Preprocessing(
            color_mode="RGB", resize_size=(224, 224), crop_size=(224, 224), mean=(0.5,) * 3, std=(0.25,) * 3
        )
        export_model(model, [str(i) for i in range(10)], spec, "explain-resnet18", 1, BENCH_MODELS)
    return path


def lite0_bundle() -> Path:
    from training.checkpoint import save_checkpoint
    from training.export import export_checkpoint
    from training.finetune import pretrained_checkpoint

    path = BENCH_MODELS / "explain-lite0" / "1"
    if not (path / "manifest.json").exists():
        ckpt = save_checkpoint(pretrained_checkpoint("efficientnet_lite0", "imagenet"), BENCH_MODELS / "lite0.pt")
        export_checkpoint(ckpt, "explain-lite0", 1, BENCH_MODELS)
    return path


def torch_model(bundle: Path):
    """The torch model a bundle was exported from (rebuilt from its checkpoint, or the bench's seed)."""
    import torch

    from striate.manifest import Manifest
    from training.checkpoint import load_checkpoint
    from training.models import create_model

    m = Manifest.load(bundle)
    if m.provenance.checkpoint:
        path = Path(m.provenance.checkpoint)
        return load_checkpoint(path if path.is_absolute() else REPO / path).build_model().eval()
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, in_chans=3, input_size=224).eval()


def cost(bundle: Path, repeats: int, gradient_only: bool = False) -> dict:
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam import ScoreCAM

    from striate.explain import forward
    from striate.explain.methods import METHODS
    from striate.explain.passes import run_passes
    from striate.manifest import Manifest
    from training.export.images import real_batch

    torch.set_num_threads(1)
    m = Manifest.load(bundle)
    ex = m.explain
    x = real_batch(m.preprocessing, 1)
    model_s = _session(bundle / m.graph)
    logits = model_s.run([m.logits_output], {"image": x})[0]
    target = int(logits.argmax())
    classify = _median_s(lambda: model_s.run([m.logits_output], {"image": x}), repeats)
    model = torch_model(bundle)
    layer = list(model.stages.values())[-1]
    xt = torch.from_numpy(x)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    rows = {"classify_ms": 1000 * classify, "methods": {}}
    for method in ex.gradient_methods:
        feeds = {"image": x, ex.targets_input: np.array([[-1]])}
        wanted = [ex.logits_output, ex.explained_output, ex.cam_outputs[method]]
        method_s = _method_session(bundle / ex.graph, wanted)
        classify, ours = _interleaved_s(
            lambda: model_s.run([m.logits_output], {"image": x}),
            lambda f=feeds, w=wanted, s=method_s: s.run(w, f),
            repeats,
        )
        cls = getattr(pytorch_grad_cam, METHODS[method].package_class)
        explainer = cls(model, [layer])
        theirs = _median_s(lambda e=explainer: e(xt, [ClassifierOutputTarget(target)]), max(3, repeats // 3))
        explainer.activations_and_grads.release()
        rows["methods"][method] = {
            "explain_ms": 1000 * ours,
            "vs_classify": ours / classify,
            "pytorch_grad_cam_ms": 1000 * theirs,
            "speedup_vs_pytorch_grad_cam": theirs / ours,
        }
    if gradient_only:
        return rows
    maps = model_s.run([ex.map_output], {"image": x})[0][0]

    def logits_fn(batch: np.ndarray) -> np.ndarray:
        return model_s.run([m.logits_output], {"image": batch})[0]

    t = np.array([target])
    heavy = x.shape[-1] >= 128  # hundreds of full-size passes: one timed run each
    few, warm = (1, False) if heavy else (max(3, repeats // 5), True)
    ours = _median_s(lambda: run_passes(forward.score_cam(x[0], maps, t), logits_fn, chunk=32), few, warm)
    explainer = ScoreCAM(model, [layer])
    explainer.batch_size = 32
    theirs = _median_s(lambda: explainer(xt, [ClassifierOutputTarget(target)]), few, warm)
    explainer.activations_and_grads.release()
    rows["scorecam_passes"] = forward.score_cam(x[0], maps, t).count
    rows["methods"]["scorecam"] = {
        "explain_ms": 1000 * (ours + classify),
        "vs_classify": (ours + classify) / classify,
        "pytorch_grad_cam_ms": 1000 * theirs,
        "speedup_vs_pytorch_grad_cam": theirs / (ours + classify),
    }
    for method, make in (
        ("occlusion", lambda: forward.occlusion(x[0], t)),
        ("rise", lambda: forward.rise(x[0], t)),
    ):
        took = _median_s(lambda mk=make: run_passes(mk(), logits_fn, chunk=32), few, warm)
        rows["methods"][method] = {"explain_ms": 1000 * (took + classify), "vs_classify": took / classify + 1}
    took = _median_s(lambda: forward.eigen_cam(maps, 1), repeats)
    rows["methods"]["eigencam"] = {"explain_ms": 1000 * (took + classify), "vs_classify": took / classify + 1}
    return rows


def faithfulness(bundle: Path, images: np.ndarray, methods: list[str]) -> dict:
    """Mean ROAD, deletion and insertion of each method's map of the predicted class."""
    from striate.explain import forward
    from striate.explain.passes import resize_map, run_passes, scale_map
    from striate.explain.scores import score_passes
    from striate.manifest import Manifest

    m = Manifest.load(bundle)
    ex = m.explain
    model_s, explain_s = _session(bundle / m.graph), _session(bundle / ex.graph)

    def logits_fn(batch: np.ndarray) -> np.ndarray:
        return model_s.run([m.logits_output], {"image": batch})[0]

    table: dict[str, dict[str, list[float]]] = {meth: {"road": [], "deletion": [], "insertion": []} for meth in methods}
    for x in images:
        logits, maps = model_s.run([m.logits_output, ex.map_output], {"image": x[None]})
        target = int(logits[0].argmax())
        t = np.array([target])
        for method in methods:
            if method in ex.gradient_methods:
                (cam,) = explain_s.run([ex.cam_outputs[method]], {"image": x[None], ex.targets_input: t[None]})
                cam = cam[0, 0]
            elif method == "scorecam":
                cam = run_passes(forward.score_cam(x, maps[0], t), logits_fn)[0]
            elif method == "eigencam":
                cam = forward.eigen_cam(maps[0], 1)[0]
            elif method == "occlusion":
                cam = run_passes(forward.occlusion(x, t), logits_fn)[0]
            else:
                cam = run_passes(forward.rise(x, t), logits_fn)[0]
            cam = scale_map(np.clip(resize_map(cam, x.shape[1:]), 0, None))
            for score in ("road", "deletion", "insertion"):
                table[method][score].append(run_passes(score_passes(score, x, cam, target), logits_fn))
    return {meth: {s: float(np.mean(v)) for s, v in scores.items()} for meth, scores in table.items()}


def digits_images(n: int) -> np.ndarray:
    from striate.manifest import Manifest
    from training.analysis.samples import load_sample

    m = Manifest.load(DEFAULT_BUNDLE)
    return load_sample(list(m.labels), m.preprocessing, "digits", n=n, split="test").x


def photos(bundle: Path) -> np.ndarray:
    from PIL import Image
    from skimage import data as skdata

    from striate.manifest import Manifest
    from striate.preprocess import preprocess

    spec = Manifest.load(bundle).preprocessing
    return np.stack([preprocess(Image.fromarray(getattr(skdata, p)()).convert("RGB"), spec) for p in PHOTOS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gradient-cost-only", action="store_true", help="only the gradient methods' cost table")
    parser.add_argument("--cost-only", action="store_true", help="every method's cost, no faithfulness tables")
    parser.add_argument("--lite0", action="store_true", help="measure cost on EfficientNet-Lite0 (224) too")
    args = parser.parse_args()
    repeats = 10 if args.quick else 40
    from threadpoolctl import threadpool_limits

    from striate.explain.methods import METHODS

    results: dict = {"cost": {}, "faithfulness": {}}
    with threadpool_limits(1):
        bundles = [("resnet18-224", resnet18_bundle()), ("digits", DEFAULT_BUNDLE)]
        if args.lite0:
            bundles.append(("lite0-224", lite0_bundle()))
        for name, bundle in bundles:
            results["cost"][name] = row = cost(bundle, repeats, args.gradient_cost_only)
            print(f"\n{name}: classify {row['classify_ms']:.2f} ms")
            for method, r in row["methods"].items():
                extra = ""
                if "pytorch_grad_cam_ms" in r:
                    ref, speed = r["pytorch_grad_cam_ms"], r["speedup_vs_pytorch_grad_cam"]
                    extra = f"  pytorch-grad-cam {ref:8.2f} ms  speed-up {speed:5.1f}x"
                print(f"  {method:10s} {r['explain_ms']:9.2f} ms  {r['vs_classify']:7.2f}x classify{extra}")
        methods = list(METHODS)
        sets = (
            ()
            if args.gradient_cost_only or args.cost_only
            else (
                ("digits test split", DEFAULT_BUNDLE, digits_images(10 if args.quick else 40)),
                ("skimage photos, EfficientNet-Lite0", lite0_bundle(), None),
            )
        )
        for title, bundle, images in sets:
            images = photos(bundle) if images is None else images
            results["faithfulness"][title] = table = faithfulness(bundle, images, methods)
            print(f"\n{title} ({len(images)} images): ROAD (higher better), deletion (lower), insertion (higher)")
            for method, s in table.items():
                print(f"  {method:10s} {s['road']:+.3f}  {s['deletion']:.3f}  {s['insertion']:.3f}")
    out = OUT
    if args.gradient_cost_only or args.cost_only:
        out = OUT.with_name("explain_gradient_cost.json" if args.gradient_cost_only else "explain_cost.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
