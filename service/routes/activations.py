"""POST /v1/models/{name}[/versions/{v}]/activations: a stage's feature maps as a PNG grid or arrays."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, UploadsDep
from service.errors import Unprocessable
from service.inference import map_layer, softmax, top_k
from service.render import activation_grid_png
from service.routes.common import NPY, model_post, png_response, prediction_headers
from service.routes.features import npy_bytes
from service.schemas import ActivationsResponse

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey])


@model_post(
    router,
    "/activations",
    response_model=ActivationsResponse,
    summary="feature maps of a stage: a PNG grid (one image), JSON or .npy arrays",
    responses={200: {"content": {"image/png": {}, NPY: {}}}},
)
async def activations(
    model: ModelDep,
    uploads: UploadsDep,
    inference: InferenceDep,
    layer: Annotated[str, Query(description="a stage whose map the bundle exports")],
    format: Annotated[Literal["png", "json", "npy"], Query()] = "png",
    channels: Annotated[int | None, Query(ge=1, description="show the first N channels (PNG)")] = None,
):
    map_layer(model, layer)
    if format == "png" and len(uploads) != 1:
        raise Unprocessable(f"format=png takes exactly one image ({len(uploads)} sent); use json or npy")
    spec, maps, logits = await inference.activations(model, uploads, layer)
    preds = top_k(softmax(logits), model.manifest.labels, 5)
    headers = prediction_headers(model, preds[0]) | {"X-Striate-Layer": layer}
    if format == "png":
        shown = maps[0][: channels or 64]
        headers["X-Striate-Channels"] = f"{len(shown)}/{maps.shape[1]}"
        return png_response(activation_grid_png(shown), headers)
    if format == "npy":
        return Response(content=npy_bytes(maps), media_type=NPY, headers=headers)
    return ActivationsResponse(
        model=model.name,
        version=model.version,
        layer=spec.name,
        shape=list(maps.shape),
        predictions=preds,
        maps=maps.tolist(),
    )
