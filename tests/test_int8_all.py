"""INT8 export (`--quantize int8`) for every registered architecture and backbone, on real images.

Small inputs and widths keep each export to seconds; the paper-size cases are `slow`. Each export
reports its held-out accuracy before and after (the manifest's metrics, shown with `-rP`) and must
stay close to the float model's logits; the trained default checkpoint's accuracy is checked in
tests/test_export.py, and pretrained EfficientNet-Lite0's ImageNet predictions below.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from sklearn.datasets import load_digits

from striate.manifest import Manifest, Preprocessing
from striate.preprocess import preprocess
from training.export import export_model
from training.export.images import digit_image, real_batch
from training.export.parity import session
from training.models import create_model
from training.models.registry import list_models

CLASSES = 10
SMALL_WIDTH = {"lenet5": 6, "googlenet": 8, "xception": 4}
# Backbones keep their stride-32 bodies: 64 px leaves them a 2x2 last map.
SIZE = {"zoo": 32, "backbone": 64}
# Heavy even at small inputs (full-size bodies, tens of seconds to minutes each here): `slow`.
HEAVY = {"googlenet", "resnet50", "se_resnet50", "xception", *list_models("backbone")}


def _digits(spec: Preprocessing, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    idx = np.arange(start, start + n)
    images = np.stack([preprocess(digit_image(digits.images[i]), spec) for i in idx])
    return images.astype(np.float32), digits.target[idx]


def _cases() -> list:
    cases = []
    for name in list_models():
        marks = [pytest.mark.slow] if name in HEAVY else []
        cases.append(pytest.param(name, marks=marks, id=name))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_int8_export(name: str, tmp_path, record_property) -> None:
    family = "backbone" if name in list_models("backbone") else "zoo"
    size = SIZE[family]
    kwargs = {"num_classes": CLASSES, "in_chans": 1, "input_size": size}
    if family == "zoo":
        kwargs["base_width"] = SMALL_WIDTH.get(name, 8)
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    spec = Preprocessing(color_mode="L", resize_size=(size, size), crop_size=(size, size), mean=(0.3,), std=(0.4,))
    calibration, _ = _digits(spec, 0, 64)
    heldout = _digits(spec, 1000, 64)
    labels = [str(i) for i in range(CLASSES)]
    path = export_model(
        model, labels, spec, "int8", out_root=tmp_path, quantize="int8", calibration=calibration, heldout=heldout
    )
    manifest = Manifest.load(path)
    metrics = manifest.metrics
    assert manifest.provenance.quantization == "int8-static-qdq"
    before, after = metrics["accuracy_float32"], metrics["accuracy_int8"]
    record_property("accuracy_float32", before)
    record_property("accuracy_int8", after)
    print(f"{name}: held-out accuracy float32 {before:.3f} -> int8 {after:.3f} (untrained, 64 digits)")
    ops = {node.op_type for node in onnx.load(path / "model.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    # The INT8 graph answers for any batch, close to the float model it came from.
    images = np.concatenate([heldout[0][:5], real_batch(spec, 3)])
    (logits,) = session(path / "model.onnx").run(["logits"], {"image": images})
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    assert logits.shape == reference.shape == (8, CLASSES)
    cosine = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
    record_property("logits_cosine_min", float(cosine.min()))
    assert cosine.min() > 0.9, (name, cosine)


@pytest.mark.slow
def test_int8_pretrained_efficientnet_lite0_keeps_its_imagenet_predictions(tmp_path) -> None:
    """Full size, real ImageNet weights, real photos: the INT8 bundle predicts what float32 does."""
    model = create_model("efficientnet_lite0", num_classes=1000, weights="imagenet").eval()
    spec = model.preprocessing
    photos = real_batch(spec, 16)[::2]  # the sample photos (odd indices are digits)
    labels = [str(i) for i in range(1000)]
    with torch.no_grad():
        float_top1 = model(torch.from_numpy(photos)).argmax(1).numpy()
    path = export_model(
        model,
        labels,
        spec,
        "lite0",
        out_root=tmp_path,
        quantize="int8",
        calibration=photos,
        heldout=(photos, float_top1),
    )
    metrics = Manifest.load(path).metrics
    print(
        f"efficientnet_lite0: top-1 agreement with float32 {metrics['accuracy_float32']:.3f} -> int8 "
        f"{metrics['accuracy_int8']:.3f} on {len(photos)} photos"
    )
    assert metrics["accuracy_float32"] == 1.0 and metrics["accuracy_int8"] >= 0.75
