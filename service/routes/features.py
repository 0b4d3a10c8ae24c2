"""POST /v1/models/{name}[/versions/{v}]/features: embeddings or a stage's pooled features."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, UploadsDep
from service.inference import feature_layer
from service.routes.common import NPY, model_post, wants_npy
from service.schemas import FeaturesResponse

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey])


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@model_post(
    router,
    "/features",
    response_model=FeaturesResponse,
    summary="features of many images: JSON, or a .npy array (Accept: application/x-npy)",
    responses={200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def features(
    model: ModelDep,
    uploads: UploadsDep,
    inference: InferenceDep,
    layer: Annotated[str, Query(description="'embedding' or a stage name (see the model's layers)")] = "embedding",
    format: Annotated[Literal["json", "npy"] | None, Query(description="overrides the Accept header")] = None,
    accept: Annotated[str | None, Header()] = None,
):
    feature_layer(model, layer)  # unknown layer: 422 before any decoding
    array = await inference.features(model, uploads, layer)
    if wants_npy(accept, format):
        headers = {"X-Striate-Model": f"{model.name}/{model.version}", "X-Striate-Layer": layer}
        return Response(content=npy_bytes(array), media_type=NPY, headers=headers)
    return FeaturesResponse(
        model=model.name, version=model.version, layer=layer, dim=int(array.shape[1]), features=array.tolist()
    )
