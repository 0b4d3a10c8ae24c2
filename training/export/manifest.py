"""Building the bundle's manifest (striate.manifest.Manifest) from what the exporter knows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import onnx
import onnxruntime
import torch
import torchvision

from striate.manifest import (
    ExplainSpec,
    FeatureLayer,
    Figure,
    InputSpec,
    Manifest,
    MethodParity,
    Parity,
    Preprocessing,
    Provenance,
    TensorSpec,
)

from .onnx_export import EXPLAIN_FILE, MODEL_FILE, OPSET
from .wrappers import CAM_OUTPUTS, EMBEDDING, EXPLAINED, IMAGE, LOGITS, TARGETS, map_name, pooled_name

DESCRIPTIONS = {LOGITS: "class scores before softmax", EMBEDDING: "global feature vector (head input)"}


def build_manifest(
    *,
    name: str,
    version: int,
    architecture: str,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    output_shapes: Mapping[str, tuple[int, ...]],
    stage_names: Sequence[str],
    metrics: Mapping[str, float],
    parity: Parity,
    data: str,
    method_parity: Sequence[MethodParity] = (),
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
    quantization: str | None = None,
    figures: Mapping[str, Figure] | None = None,
    report: str | None = None,
) -> Manifest:
    """`output_shapes` maps each model.onnx output to its shape without the batch axis, in graph order."""
    outputs = tuple(
        TensorSpec(name=out, shape=(-1, *shape), description=DESCRIPTIONS.get(out, _describe(out, stage_names)))
        for out, shape in output_shapes.items()
    )
    layers = [FeatureLayer(name=EMBEDDING, output=EMBEDDING, dim=output_shapes[EMBEDDING][0])]
    for stage in stage_names:
        c, h, w = output_shapes[map_name(stage)]
        layers.append(
            FeatureLayer(name=stage, output=pooled_name(stage), dim=c, map_output=map_name(stage), map_shape=(c, h, w))
        )
    last_map = output_shapes[map_name(stage_names[-1])]
    return Manifest(
        name=name,
        version=version,
        architecture=architecture,
        graph=MODEL_FILE,
        labels=tuple(labels),
        input=InputSpec(
            name=IMAGE,
            channels=preprocessing.channels,
            height=preprocessing.crop_size[0],
            width=preprocessing.crop_size[1],
        ),
        preprocessing=preprocessing,
        outputs=outputs,
        logits_output=LOGITS,
        embedding_layer=EMBEDDING,
        layers=tuple(layers),
        explain=ExplainSpec(
            graph=EXPLAIN_FILE,
            target_layer=stage_names[-1],
            map_output=map_name(stage_names[-1]),
            targets_input=TARGETS,
            explained_output=EXPLAINED,
            logits_output=LOGITS,
            cam_outputs=dict(CAM_OUTPUTS),
            resolution="feature",
            cam_shape=(last_map[1], last_map[2]),
            parity=tuple(method_parity),
        ),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        provenance=Provenance(
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            torch=torch.__version__,
            torchvision=torchvision.__version__,
            onnx=onnx.__version__,
            onnxruntime=onnxruntime.__version__,
            opset=OPSET,
            data=data or None,
            parity=parity,
            quantization=quantization,
        ),
        figures=dict(figures or {}),
        report=report,
    )


def _describe(output: str, stage_names: Sequence[str]) -> str:
    for stage in stage_names:
        if output == pooled_name(stage):
            return f"stage {stage!r}, global average pooled"
        if output == map_name(stage):
            return f"stage {stage!r} feature map"
    return ""
