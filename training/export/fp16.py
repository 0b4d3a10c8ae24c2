"""Half precision for GPUs: a bundle's model graph computed in float16, float32 at its edges.

`convert_bundle(bundle)` rewrites `model.onnx` with onnxconverter-common's float16 converter
(`keep_io_types=True`: inputs and outputs stay float32, so the manifest, the service and every
client are unchanged), checks it against the float32 graph on the same inputs, and records the
check in the manifest's metrics. The explain graph stays float32 (gradients in float16 lose the
small values Grad-CAM is made of). On the CPU a float16 graph is slower, not faster: it is meant for
CUDA (tensor cores); bench/gpu_bench.py measures both.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from striate.errors import StriateError
from striate.manifest import Manifest

INNER = "__fp32_inner"  # suffix of a graph output's internal tensor while converting
CHECK_IMAGES = 16
TOP1_AGREEMENT_MIN = 0.9  # on random inputs; below this the float16 graph is refused


@dataclass(frozen=True)
class Fp16Check:
    max_abs_diff_logits: float
    top1_agreement: float
    images: int


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph in float16 with float32 inputs and outputs.

    A graph output that other nodes also read (our feature outputs are) trips the converter: it
    casts the output but leaves a consumer bound to the float32 name. Each output therefore gets
    its own Identity of the internal tensor first."""
    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for output in graph.output:
        inner = output.name + INNER
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        graph.node.append(helper.make_node("Identity", [inner], [output.name]))
    with warnings.catch_warnings():  # "float32 number ... will be truncated": expected for tiny weights
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True)


def check(fp32_path: Path, fp16_path: Path, manifest: Manifest, seed: int = 0) -> Fp16Check:
    """Both graphs on the same inputs (standard-normal, the preprocessed domain), on the CPU."""
    import onnxruntime as ort

    spec = manifest.input
    x = np.random.default_rng(seed).standard_normal((CHECK_IMAGES, spec.channels, spec.height, spec.width))
    feeds = {spec.name: x.astype(np.float32)}
    out = [manifest.logits_output]
    ref = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(out, feeds)[0]
    half = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"]).run(out, feeds)[0]
    if half.dtype != np.float32:
        raise StriateError(f"the float16 graph's {out[0]} is {half.dtype}, not float32")
    agreement = float((ref.argmax(1) == half.argmax(1)).mean())
    return Fp16Check(float(np.abs(ref - half).max()), agreement, CHECK_IMAGES)


def convert_bundle(bundle: Path) -> Fp16Check:
    """Rewrite `bundle`'s model graph in float16 (checked first) and note the check in its manifest."""
    bundle = Path(bundle)
    manifest = Manifest.load(bundle)
    graph_path = bundle / manifest.graph
    tmp = graph_path.with_suffix(".fp16.onnx")
    onnx.save(to_float16(onnx.load(str(graph_path))), str(tmp))
    try:
        result = check(graph_path, tmp, manifest)
        if result.top1_agreement < TOP1_AGREEMENT_MIN:
            raise StriateError(
                f"the float16 graph agrees with float32 on {result.top1_agreement:.0%} of top-1 classes "
                f"(< {TOP1_AGREEMENT_MIN:.0%}); keep this model in float32"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(graph_path)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc.setdefault("metrics", {}).update(
        {
            "fp16_max_abs_diff_logits": result.max_abs_diff_logits,
            "fp16_top1_agreement": result.top1_agreement,
            "fp16_check_images": float(result.images),
        }
    )
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    Manifest.load(bundle)  # still a valid bundle
    return result
