"""The bundle manifest: the one contract between training/export and the service.

`exported/<name>/<version>/manifest.json` is validated against `Manifest`. Only pydantic and the
standard library are imported here so that the service can load it without any training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """How an image becomes the model's input tensor, applied in this order.

    1. decode, apply EXIF orientation, convert to `color_mode` ("L" grayscale or "RGB");
    2. resize: `resize_mode="shorter"` scales the shorter side to `resize_size[0]` keeping aspect,
       `"exact"` resizes to `resize_size` (H, W) ignoring aspect; Pillow resampling `interpolation`;
    3. centre-crop to `crop_size` (H, W);
    4. scale to [0, 1] (divide by 255), subtract `mean`, divide by `std` per channel; layout NCHW.
    """

    color_mode: Literal["L", "RGB"]
    resize_mode: Literal["shorter", "exact"] = "exact"
    resize_size: tuple[int, int]
    crop_size: tuple[int, int]
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    @model_validator(mode="after")
    def _check(self) -> Preprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values for color_mode {self.color_mode}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class InputSpec(_Strict):
    name: str = "image"
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    channels: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)


class TensorSpec(_Strict):
    """One graph output. `shape` uses -1 for the dynamic batch axis."""

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...]
    description: str = ""


class FeatureLayer(_Strict):
    """A layer whose pooled features are a graph output (and, optionally, its raw map)."""

    name: str  # layer name as the API knows it: "embedding" or a stage name
    output: str  # graph output holding the pooled [N, C] features
    dim: int
    map_output: str | None = None  # graph output holding the [N, C, h, w] map, if exported
    map_shape: tuple[int, int, int] | None = None  # (C, h, w)


class ExplainSpec(_Strict):
    """Grad-CAM computed in onnxruntime by a graph the exporter wrote."""

    method: Literal["gradcam"] = "gradcam"
    graph: str  # file name inside the bundle, e.g. "explain.onnx"
    target_layer: str
    target_input: str = "target"  # int64 [N]; a negative value means "the predicted class"
    cam_output: str = "cam"  # float32 [N, h, w], already ReLU'd and scaled to [0, 1] per image
    logits_output: str = "logits"
    resolution: Literal["feature", "input"] = "feature"
    cam_shape: tuple[int, int]  # (h, w) of the cam output


class Parity(_Strict):
    images: int
    max_abs_diff_logits: float
    max_abs_diff_embedding: float
    max_abs_diff_cam: float | None = None
    tolerance: float


class Provenance(_Strict):
    created: str
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    torch: str | None = None
    torchvision: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    opset: int | None = None
    data: str | None = None
    parity: Parity | None = None
    quantization: str | None = None  # e.g. "int8-static-qdq"; None for float models


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: int = Field(ge=1)
    task: Literal["classification"] = "classification"
    architecture: str
    graph: str = "model.onnx"
    labels: tuple[str, ...]
    input: InputSpec
    preprocessing: Preprocessing
    outputs: tuple[TensorSpec, ...]
    logits_output: str = "logits"
    embedding_layer: str = "embedding"
    layers: tuple[FeatureLayer, ...]
    explain: ExplainSpec | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    provenance: Provenance

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        names = {o.name for o in self.outputs}
        if self.logits_output not in names:
            raise ValueError(f"logits output {self.logits_output!r} is not among the outputs")
        for layer in self.layers:
            if layer.output not in names:
                raise ValueError(f"layer {layer.name!r} names missing output {layer.output!r}")
            if layer.map_output is not None and layer.map_output not in names:
                raise ValueError(f"layer {layer.name!r} names missing map output {layer.map_output!r}")
        if self.embedding_layer not in {layer.name for layer in self.layers}:
            raise ValueError(f"embedding layer {self.embedding_layer!r} is not among the layers")
        if self.input.channels != self.preprocessing.channels:
            raise ValueError("input channels disagree with the preprocessing colour mode")
        if (self.input.height, self.input.width) != tuple(self.preprocessing.crop_size):
            raise ValueError("input height/width disagree with the preprocessing crop size")
        if len(self.labels) < 1:
            raise ValueError("a classifier needs at least one label")
        return self

    def layer(self, name: str) -> FeatureLayer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    @classmethod
    def load(cls, bundle_dir: str | Path) -> Manifest:
        path = Path(bundle_dir) / MANIFEST_FILE
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))

    def dump(self, bundle_dir: str | Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path
