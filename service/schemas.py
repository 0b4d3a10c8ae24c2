"""Response shapes of the v1 API (they document the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field


class FastJSONResponse(Response):
    """JSON serialised by orjson from plain data, with no pydantic re-validation: the hot routes build
    exactly their declared `response_model` shape (the models below document it, and the API tests
    validate answers against the OpenAPI document)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ClassScore(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(ClassScore):
    top_k: list[ClassScore] = Field(description="the k most probable classes, best first")


class ClassifyResponse(BaseModel):
    model: str
    version: int
    results: list[Prediction]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "digits",
                    "version": 1,
                    "results": [
                        {
                            "label": "3",
                            "index": 3,
                            "probability": 0.97,
                            "top_k": [
                                {"label": "3", "index": 3, "probability": 0.97},
                                {"label": "8", "index": 8, "probability": 0.02},
                            ],
                        }
                    ],
                }
            ]
        }
    }


class FeaturesResponse(BaseModel):
    model: str
    version: int
    layer: str
    dim: int
    features: list[list[float]] = Field(description="[N, dim], one row per image, in request order")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"model": "digits", "version": 1, "layer": "embedding", "dim": 4, "features": [[0.0, 1.25, 0.5, 3.0]]}
            ]
        }
    }


class Score(BaseModel):
    name: str = Field(description="road | deletion | insertion | drop")
    value: float
    higher_is_better: bool


class TargetExplanation(BaseModel):
    target: ClassScore
    cam: list[list[float]] = Field(description="the map, in [0, 1] (feature or input resolution)")
    score: Score | None = Field(None, description="the map's faithfulness, when `score` was asked for")


class Explanation(BaseModel):
    prediction: Prediction
    target: ClassScore = Field(description="the first class explained (the predicted one unless asked)")
    cam: list[list[float]] = Field(description="the first target's map, in [0, 1]")
    explanations: list[TargetExplanation] = Field(description="one per target, in the order asked")


class MethodInfo(BaseModel):
    name: str
    title: str
    kind: str = Field(description="gradient (explain graph) | forward (forward passes only)")
    per_class: bool = Field(
        True, description="false: one map whatever class is asked (Eigen-CAM: the first principal component)"
    )
    summary: str = Field("", description="how the method makes its map, in one sentence")
    parity: float | None = Field(None, description="max abs difference to pytorch-grad-cam at export")


class UnavailableMethod(BaseModel):
    name: str
    title: str
    kind: str
    why: str = Field(description="why this bundle cannot run it")


class ExplainInfo(BaseModel):
    target_layer: str | None
    cam_shape: list[int] | None = Field(description="(h, w) of the target layer's maps (gradient methods)")
    default_method: str
    methods: list[MethodInfo]
    unavailable: list[UnavailableMethod] = Field(description="the registered methods this bundle cannot run, and why")
    scores: list[str]
    max_targets: int
    max_passes: int


class ExplainResponse(BaseModel):
    model: str
    version: int
    method: str
    target_layer: str | None
    results: list[Explanation]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "digits",
                    "version": 1,
                    "method": "gradcam",
                    "target_layer": "layer2",
                    "results": [
                        {
                            "prediction": {
                                "label": "3",
                                "index": 3,
                                "probability": 0.97,
                                "top_k": [{"label": "3", "index": 3, "probability": 0.97}],
                            },
                            "target": {"label": "3", "index": 3, "probability": 0.97},
                            "cam": [[0.0, 0.2], [0.7, 1.0]],
                            "explanations": [
                                {
                                    "target": {"label": "3", "index": 3, "probability": 0.97},
                                    "cam": [[0.0, 0.2], [0.7, 1.0]],
                                    "score": {"name": "road", "value": 0.12, "higher_is_better": True},
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    }


class ActivationsResponse(BaseModel):
    model: str
    version: int
    layer: str
    shape: list[int] = Field(description="[N, C, h, w]")
    predictions: list[Prediction]
    maps: list[list[list[list[float]]]]


class LayerInfo(BaseModel):
    name: str
    dim: int
    map_shape: list[int] | None = None


class FigureInfo(BaseModel):
    name: str
    caption: str
    url: str = Field(description="GET it for the PNG (with the API key, when the server has one)")


class ModelVersion(BaseModel):
    name: str
    version: int
    latest: bool
    architecture: str
    provider: str
    labels: list[str]
    input: dict
    preprocessing: dict
    layers: list[LayerInfo]
    explain: ExplainInfo
    metrics: dict[str, float]
    provenance: dict
    figures: list[FigureInfo] = Field(default_factory=list, description="training figures the bundle carries")
    report: str | None = Field(None, description="URL of the training report (HTML), when the bundle carries one")


class BrokenModel(BaseModel):
    name: str
    version: str
    error: str


class ModelSummary(BaseModel):
    name: str
    versions: list[int]
    latest: int
    labels: int
    architecture: str


class ModelList(BaseModel):
    models: list[ModelSummary]
    broken: list[BrokenModel]


class ModelDetail(ModelVersion):
    versions: list[int]
