"""POST /v1/models/{name}[/versions/{v}]/classify

The hottest route: served by `classify_direct` (a `DirectRoute` twin that checks the key, leases the
model, reads the body and `top_k` itself), documented by `classify`'s signature."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.deps import ApiKey, InferenceDep, ModelDep, UploadsDep, check_api_key
from service.images import read_uploads
from service.routes.common import DirectRoute, QueryParam, model_post, serves
from service.schemas import ClassifyResponse, FastJSONResponse

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey], route_class=DirectRoute)

TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to list per image")]
top_k_param = QueryParam("top_k", TopK, 5)


@model_post(router, "/classify", response_model=ClassifyResponse, summary="classify one or many images")
async def classify(model: ModelDep, uploads: UploadsDep, inference: InferenceDep, top_k: TopK = 5) -> FastJSONResponse:
    """Documents the route (OpenAPI); requests are served by `classify_direct`."""
    results = await inference.classify(model, uploads, top_k)
    return FastJSONResponse({"model": model.name, "version": model.version, "results": results})


@serves(classify)
async def classify_direct(request: Request) -> FastJSONResponse:
    """`classify`, with its dependencies done in their order: key, model (leased), body, `top_k`."""
    state = request.app.state
    settings = state.settings
    await check_api_key(request, settings)
    params = request.path_params
    with state.repository.get(params["name"], params.get("version")).lease() as model:
        uploads = await read_uploads(request, settings)
        k = top_k_param(request)
        results = await state.inference.classify(model, uploads, k)
        return FastJSONResponse({"model": model.name, "version": model.version, "results": results})
