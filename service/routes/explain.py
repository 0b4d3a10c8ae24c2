"""POST /v1/models/{name}[/versions/{v}]/explain: Grad-CAM, computed by the bundle's explain graph."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import ApiKey, InferenceDep, ModelDep, UploadsDep
from service.errors import Unprocessable
from service.inference import resolve_target, softmax, top_k
from service.render import heatmap_png, overlay_png
from service.routes.common import JsonOrPng, header_value, model_post, png_response, prediction_headers
from service.schemas import ExplainResponse

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey])


@model_post(
    router,
    "/explain",
    response_model=ExplainResponse,
    summary="Grad-CAM for a class (default: the predicted one) with the prediction",
    description="`format=json` returns the map as numbers for every image; `png` a heatmap and "
    "`overlay` the heatmap blended on the image (one image; the prediction is in X-Striate-* headers).",
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def explain(
    model: ModelDep,
    uploads: UploadsDep,
    inference: InferenceDep,
    target: Annotated[str | None, Query(description="class index or label; default: the predicted class")] = None,
    format: Annotated[JsonOrPng, Query(description="json | png | overlay")] = "json",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity of the overlay")] = 0.5,
):
    index = resolve_target(model, target)
    if format != "json" and len(uploads) != 1:
        raise Unprocessable(f"format={format} takes exactly one image ({len(uploads)} sent); use format=json")
    logits, cams, decoded = await inference.explain(model, uploads, index, keep=format != "json")
    labels = model.manifest.labels
    probs = softmax(logits)
    preds = top_k(probs, labels, 5)
    ex = model.manifest.explain
    if format == "json":
        results = []
        for pred, row, cam in zip(preds, probs, cams, strict=True):
            t = pred["index"] if index is None else index
            target_score = {"label": labels[t], "index": t, "probability": float(row[t])}
            results.append({"prediction": pred, "target": target_score, "cam": cam.tolist()})
        return ExplainResponse(
            model=model.name, version=model.version, method=ex.method, target_layer=ex.target_layer, results=results
        )
    pred = preds[0]
    t = pred["index"] if index is None else index
    headers = prediction_headers(model, pred)
    headers |= {"X-Striate-Target-Label": header_value(labels[t]), "X-Striate-Target-Index": str(t)}
    spec = model.manifest.preprocessing
    image = decoded.images[0]
    data = heatmap_png(cams[0], image.size, spec) if format == "png" else overlay_png(cams[0], image, spec, alpha)
    return png_response(data, headers)
