"""POST /v1/models/{name}[/versions/{v}]/classify"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import ApiKey, InferenceDep, ModelDep, UploadsDep
from service.routes.common import model_post
from service.schemas import ClassifyResponse, FastJSONResponse

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey])


@model_post(router, "/classify", response_model=ClassifyResponse, summary="classify one or many images")
async def classify(
    model: ModelDep,
    uploads: UploadsDep,
    inference: InferenceDep,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to list per image")] = 5,
) -> FastJSONResponse:
    results = await inference.classify(model, uploads, top_k)
    return FastJSONResponse({"model": model.name, "version": model.version, "results": results})
