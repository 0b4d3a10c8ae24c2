"""The bundle manifest: the one contract between training/export and the service.

`exported/<name>/<version>/manifest.json` is validated against `Manifest`. Only pydantic and the
standard library are imported here so that the service can load it without any training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from striate.explain.methods import GRADIENT_METHODS

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
FIGURE_NAME = r"^[a-z0-9][a-z0-9_-]*$"  # a figure's name, as its URL segment


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


class MethodParity(_Strict):
    """How closely a gradient method in the explain graph matches pytorch-grad-cam, checked at export.

    `max_abs_diff`: onnxruntime vs pytorch-grad-cam's class of the same name, on the scaled maps of
    the export's real images. Where float32 rounding puts that over `tolerance` (an ill-conditioned
    map: XGrad-CAM divides by a channel's activation sum, which nearly cancels after Hardswish),
    both are compared with a float64 reference: the method passes when onnxruntime is within
    `tolerance` of it, or no farther from it than pytorch-grad-cam is (`package_float64_diff`: its
    farthest run over one and several torch threads). The explain graph does the CAM arithmetic in
    float64, so what is left is the rounding of the float32 forward pass, in both libraries alike.
    """

    method: str
    max_abs_diff: float
    tolerance: float
    float64_diff: float | None = None
    package_float64_diff: float | None = None

    @property
    def passed(self) -> bool:
        if self.max_abs_diff <= self.tolerance:  # False for NaN
            return True
        if self.float64_diff is None or self.package_float64_diff is None:
            return False
        return self.float64_diff <= max(self.tolerance, self.package_float64_diff)


class ExplainSpec(_Strict):
    """What a bundle can explain: the target layer, and the gradient methods its explain graph computes.

    The explain graph (`graph`) takes `image` and `targets_input` int64 [N, T] (t >= 0 a class index,
    -k the k-th most probable class) and returns `logits_output`, `explained_output` int64 [N, T]
    (the class each map explains) and, per gradient method, `cam_outputs[method]` float32
    [N, T, h, w], ReLU'd and scaled to [0, 1] per map. Older bundles (`single_target`) take one
    target per image, `[N]`, and return Grad-CAM only, `[N, h, w]`.
    Forward methods (Score-CAM, Eigen-CAM) use `map_output`, the target layer's map in model.onnx.
    """

    graph: str | None = None  # file name inside the bundle, e.g. "explain.onnx"; None: no gradient graph
    no_gradients: str | None = None  # without a graph: why (e.g. the head op that has no backward rule)
    target_layer: str
    map_output: str | None = None
    targets_input: str = "targets"
    explained_output: str | None = "explained"
    logits_output: str = "logits"
    cam_outputs: dict[str, str] = Field(default_factory=dict)
    resolution: Literal["feature", "input"] = "feature"
    cam_shape: tuple[int, int]  # (h, w) of the maps
    single_target: bool = False
    parity: tuple[MethodParity, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data):
        """Read the first layout ({"method": "gradcam", "target_input", "cam_output", ...}, or a graph
        without `cam_outputs`): one target per image in `target`, Grad-CAM out in `cam`."""
        legacy_keys = {"target_input", "cam_output", "method"}
        first_layout = isinstance(data, dict) and (
            bool(legacy_keys & set(data)) or (data.get("graph") is not None and "cam_outputs" not in data)
        )
        if first_layout:
            data = dict(data)
            data.pop("method", None)
            data["targets_input"] = data.pop("target_input", "target")
            data["cam_outputs"] = {"gradcam": data.pop("cam_output", "cam")}
            data["explained_output"] = None
            data["single_target"] = True
        return data

    @model_validator(mode="after")
    def _check(self) -> ExplainSpec:
        unknown = sorted(set(self.cam_outputs) - set(GRADIENT_METHODS))
        if unknown:
            raise ValueError(f"explain graph outputs for unknown gradient methods {unknown}")
        if self.cam_outputs and self.graph is None:
            raise ValueError("cam_outputs need an explain graph")
        return self

    @property
    def gradient_methods(self) -> tuple[str, ...]:
        return tuple(m for m in GRADIENT_METHODS if m in self.cam_outputs) if self.graph else ()

    def method_parity(self, method: str) -> MethodParity | None:
        return next((p for p in self.parity if p.method == method), None)


class Parity(_Strict):
    images: int
    max_abs_diff_logits: float
    max_abs_diff_embedding: float
    max_abs_diff_cam: float | None = None
    tolerance: float
    reference: str = "the torch model"  # what the bundle's outputs were compared with


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


FIGURES_DIR = "figures"  # where a bundle keeps its training figures and report


def _inside_figures(path: str, suffix: str) -> str:
    """A bundle-relative POSIX path under figures/ with the given suffix: never absolute, never `..`."""
    parts = path.split("/")
    if (
        len(parts) != 2
        or parts[0] != FIGURES_DIR
        or not parts[1]
        or parts[1].startswith(".")
        or "\\" in path
        or not parts[1].endswith(suffix)
    ):
        raise ValueError(f"{path!r} must be a file {FIGURES_DIR}/<name>{suffix} inside the bundle")
    return path


class Figure(_Strict):
    """A training figure the bundle carries (learning curves, confusion matrix): a PNG in figures/."""

    file: str  # bundle-relative, e.g. "figures/curves.png"
    caption: str

    @model_validator(mode="after")
    def _check(self) -> Figure:
        _inside_figures(self.file, ".png")
        return self


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
    # The training run's figures (name -> PNG and caption) and its self-contained HTML report, when
    # the exporter found them beside the checkpoint; a bundle without them serves and explains alike.
    figures: dict[Annotated[str, Field(pattern=FIGURE_NAME)], Figure] = Field(default_factory=dict)
    report: str | None = None  # bundle-relative, e.g. "figures/report.html"

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
        ex = self.explain
        if ex is not None and ex.map_output is not None and ex.map_output not in names:
            raise ValueError(f"explain names missing map output {ex.map_output!r}")
        if self.embedding_layer not in {layer.name for layer in self.layers}:
            raise ValueError(f"embedding layer {self.embedding_layer!r} is not among the layers")
        if self.input.channels != self.preprocessing.channels:
            raise ValueError("input channels disagree with the preprocessing colour mode")
        if (self.input.height, self.input.width) != tuple(self.preprocessing.crop_size):
            raise ValueError("input height/width disagree with the preprocessing crop size")
        if len(self.labels) < 1:
            raise ValueError("a classifier needs at least one label")
        if self.report is not None:
            _inside_figures(self.report, ".html")
        return self

    def layer(self, name: str) -> FeatureLayer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    @classmethod
    def load(cls, bundle_dir: str | Path) -> Manifest:
        path = Path(bundle_dir) / MANIFEST_FILE
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))

    def dump(self, bundle_dir: str | Path) -> Path:
        """Write manifest.json; fields a bundle does not use (training figures, the reason it has no
        gradient graph) are left out, so services older than those fields read it too."""
        path = Path(bundle_dir) / MANIFEST_FILE
        absent: dict[str, Any] = {name: True for name in ("figures", "report") if not getattr(self, name)}
        if self.explain is not None and self.explain.no_gradients is None:
            absent["explain"] = {"no_gradients"}
        path.write_text(self.model_dump_json(indent=2, exclude=absent) + "\n", encoding="utf-8")
        return path
