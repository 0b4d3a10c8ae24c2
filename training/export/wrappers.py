"""The two exported graphs as nn.Modules, with their I/O names declared once.

`model.onnx` (FeaturesGraph): image -> logits, embedding, <stage>_pooled, <stage>_map.
`explain.onnx` (ExplainGraph): image, target -> logits, cam. Classify requests run the first graph
and never pay for Grad-CAM. Every name the exporter, the manifest and the parity check use comes
from `GraphIO`, and the dynamic batch axis is derived from it for every input and output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from striate.errors import StriateError
from training.models.base import StriateModel

from .gradcam import HeadGradCAM

IMAGE = "image"
TARGET = "target"
LOGITS = "logits"
EMBEDDING = "embedding"
CAM = "cam"
BATCH_AXIS = "batch"


def pooled_name(stage: str) -> str:
    return f"{stage}_pooled"


def map_name(stage: str) -> str:
    return f"{stage}_map"


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Axis 0 of every input and output is the batch."""
        return {name: {0: BATCH_AXIS} for name in (*self.inputs, *self.outputs)}


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


EXPLAIN_IO = GraphIO(inputs=(IMAGE, TARGET), outputs=(LOGITS, CAM))


def _check_stage_names(model: StriateModel) -> None:
    reserved = {IMAGE, TARGET, LOGITS, EMBEDDING, CAM}
    clash = reserved.intersection(model.stage_names)
    if clash or not model.stage_names:
        raise StriateError(f"stage names {model.stage_names} are empty or clash with graph names {sorted(clash)}")


class FeaturesGraph(nn.Module):
    """model.onnx: the classifier plus the features of every named stage.

    The head runs through `HeadGradCAM.embed` (the same ops as explain.onnx) so that pooling sizes
    the ONNX exporter refuses still export; parity against the model's own forward checks it.
    """

    def __init__(self, model: StriateModel, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        _check_stage_names(model)
        self.model = model
        self.head = HeadGradCAM(model.head, feature_shape)
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
    """explain.onnx: logits and the Grad-CAM of the last stage for `target` (negative = predicted)."""

    io = EXPLAIN_IO

    def __init__(self, model: StriateModel, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = model
        self.gradcam = HeadGradCAM(model.head, feature_shape)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gradcam(self.model.forward_features(image), target)
