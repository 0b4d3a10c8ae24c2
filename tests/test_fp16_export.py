"""`striate export --fp16`: the model graph in float16 inside, float32 at its edges, checked and noted."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
from service_fixtures import DEFAULT_BUNDLE, digits_png_bytes

from striate.manifest import Manifest
from striate.preprocess import decode_image, preprocess
from training.export.fp16 import convert_bundle


def test_the_default_bundle_in_float16_keeps_its_contract_and_its_answers(tmp_path):
    bundle = tmp_path / "digits" / "1"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = Manifest.load(bundle)
    fp32 = ort.InferenceSession(str(DEFAULT_BUNDLE / manifest.graph), providers=["CPUExecutionProvider"])

    result = convert_bundle(bundle)

    graph = onnx.load(str(bundle / manifest.graph))
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]  # conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    half = ort.InferenceSession(str(bundle / manifest.graph), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in half.get_inputs()] == [(i.name, i.type) for i in fp32.get_inputs()]
    assert [(o.name, o.type) for o in half.get_outputs()] == [(o.name, o.type) for o in fp32.get_outputs()]
    x = np.stack([preprocess(decode_image(digits_png_bytes(i)), manifest.preprocessing) for i in range(10)])
    out = [o.name for o in fp32.get_outputs()]
    ref, got = fp32.run(out, {manifest.input.name: x}), half.run(out, {manifest.input.name: x})
    assert (ref[0].argmax(1) == got[0].argmax(1)).all()
    for a, b in zip(ref, got, strict=True):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() <= 0.02 * max(1.0, float(np.abs(a).max()))
    metrics = Manifest.load(bundle).metrics
    assert metrics["fp16_top1_agreement"] == result.top1_agreement >= 0.9
    assert metrics["fp16_max_abs_diff_logits"] == result.max_abs_diff_logits > 0.0  # float16 is not float32
    assert (bundle / "explain.onnx").read_bytes() == (DEFAULT_BUNDLE / "explain.onnx").read_bytes()
