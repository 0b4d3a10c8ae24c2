"""The two exported graphs as nn.Modules, with their I/O names declared once.

`model.onnx` (FeaturesGraph): image -> logits, embedding, <stage>_pooled, <stage>_map.
`explain.onnx` (ExplainGraph): image [N, ...], targets [N, T] -> logits, the explained classes and
one map per gradient method, `cam_<method>` [N, T, h, w]. Classify requests run the first graph and
never pay for explanations. Every name the exporter, the manifest and the parity check use comes
from `GraphIO`, and the dynamic batch axis is derived from it for every input and output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from striate.errors import StriateError
from striate.explain.methods import GRADIENT_METHODS, cam_output_name
from training.explain.cams import cam
from training.explain.head import HeadVJP
from training.models.base import StriateModel

IMAGE = "image"
TARGETS = "targets"  # int64 [N, T]; t >= 0 a class index, -k the k-th most probable class
LOGITS = "logits"
EMBEDDING = "embedding"
EXPLAINED = "explained"  # int64 [N, T]: the class index each map explains
BATCH_AXIS = "batch"
TARGET_AXIS = "targets"


def pooled_name(stage: str) -> str:
    return f"{stage}_pooled"


def map_name(stage: str) -> str:
    return f"{stage}_map"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    per_target: tuple[str, ...] = ()  # inputs and outputs whose axis 1 is the target axis

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axis 0 of every input and output is the batch; axis 1 of the per-target ones, the targets."""
        return {
            name: {0: BATCH_AXIS, 1: TARGET_AXIS} if name in self.per_target else {0: BATCH_AXIS}
            for name in (*self.inputs, *self.outputs)
        }


def features_io(stage_names: list[str]) -> GraphIO:
    return GraphIO(
        inputs=(IMAGE,),
        outputs=(
            LOGITS,
            EMBEDDING,
            *(pooled_name(s) for s in stage_names),
            *(map_name(s) for s in stage_names),
        ),
    )


CAM_OUTPUTS = {method: cam_output_name(method) for method in GRADIENT_METHODS}
EXPLAIN_IO = GraphIO(
    inputs=(IMAGE, TARGETS),
    outputs=(LOGITS, EXPLAINED, *CAM_OUTPUTS.values()),
    per_target=(TARGETS, EXPLAINED, *CAM_OUTPUTS.values()),
)


def _check_stage_names(model: StriateModel) -> None:
    reserved = {IMAGE, TARGETS, LOGITS, EMBEDDING, EXPLAINED, *CAM_OUTPUTS.values()}
    clash = reserved.intersection(model.stage_names)
    if clash or not model.stage_names:
        raise StriateError(f"stage names {model.stage_names} are empty or clash with graph names {sorted(clash)}")


class FeaturesGraph(nn.Module):
    """model.onnx: the classifier plus the features of every named stage.

    The head runs through `HeadVJP.embed` (the same ops as explain.onnx) so that pooling sizes
    the ONNX exporter refuses still export; parity against the model's own forward checks it.
    """

    def __init__(self, model: StriateModel, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        _check_stage_names(model)
        self.model = model
        self.head = HeadVJP(model.head, feature_shape)
        self.io = features_io(model.stage_names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.forward_stages(image)
        last = maps[self.model.stage_names[-1]]
        embedding, _ = self.head.embed(last)
        logits = self.model.head.fc(embedding)
        pooled = [m.mean(dim=(2, 3)) for m in maps.values()]
        return (logits, embedding, *pooled, *maps.values())


def feature_shape(model: StriateModel, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, h, w) of the last stage's map for one input of `input_shape`."""
    with torch.no_grad():
        c, h, w = model.eval().forward_features(torch.zeros(1, *input_shape)).shape[1:]
    return int(c), int(h), int(w)


class ExplainGraph(nn.Module):
    """explain.onnx: logits, the explained classes and every gradient method's maps of the last stage."""

    io = EXPLAIN_IO

    def __init__(self, model: StriateModel, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = model
        self.vjp = HeadVJP(model.head, feature_shape)

    def forward(self, image: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.forward_features(image)
        logits, chosen, grads = self.vjp(features, targets)
        a = features.unsqueeze(1)  # [N, 1, C, h, w]: shared by the image's targets
        return (logits, chosen, *(cam(method, a, grads) for method in CAM_OUTPUTS))
