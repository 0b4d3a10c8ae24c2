"""POST /v1/models/{name}[/versions/{v}]/explain: CAM maps for one or several classes per image.

Gradient methods run in the bundle's explain graph; gradient-free ones as batches of forward
passes (service/explain.py). `score=` adds each map's faithfulness.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, SettingsDep, UploadsDep
from service.errors import Unprocessable
from service.explain import explain as run_explain
from service.explain import first_batcher, parse_query
from service.inference import softmax, top_k
from service.render import heatmap_png, overlay_png
from service.routes.common import NPY, error_responses, header_value, model_post, png_response, prediction_headers
from service.routes.features import npy_bytes
from service.schemas import ExplainResponse
from striate.explain.methods import METHODS
from striate.explain.scores import SCORES

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiKey])

ExplainFormat = Literal["json", "png", "overlay", "npy"]
ERRORS = {
    422: error_responses(422)[422]
    | {"description": "unknown method or class, method not available, too many targets or passes"}
}


@model_post(
    router,
    "/explain",
    response_model=ExplainResponse,
    summary="CAM explanations (Grad-CAM and family) for one or several classes per image",
    description="`method`: " + ", ".join(f"`{m}` ({i.title}, {i.kind})" for m, i in METHODS.items()) + ". "
    "`targets` (class indices or labels, comma-separated) or `top_targets` (the k most probable "
    "classes); default: the predicted class. `score`: " + ", ".join(f"`{s}`" for s in SCORES) + " adds "
    "each map's faithfulness. `format=json` returns every map as numbers; `npy` a float32 array "
    "[N, T, h, w]; `png` a heatmap and `overlay` the heatmap on the image (one image, one target; "
    "the prediction and the target are in X-Striate-* headers).",
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}, NPY: {}}},
        **ERRORS,
    },
)
async def explain(
    model: ModelDep,
    uploads: UploadsDep,
    inference: InferenceDep,
    settings: SettingsDep,
    method: Annotated[str | None, Query(description="explanation method; default: the model's default_method")] = None,
    targets: Annotated[str | None, Query(description="classes to explain: indices or labels, comma-separated")] = None,
    top_targets: Annotated[int | None, Query(ge=1, description="explain the k most probable classes")] = None,
    target: Annotated[str | None, Query(description="one class (older form of `targets`)")] = None,
    score: Annotated[str | None, Query(description="faithfulness score: " + ", ".join(SCORES))] = None,
    format: Annotated[ExplainFormat, Query(description="json | png | overlay | npy")] = "json",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap opacity of the overlay")] = 0.5,
):
    if targets and target:
        raise Unprocessable("give targets (or the older target), not both")
    query = parse_query(model, settings, method, targets or target, top_targets, score)
    if format in ("png", "overlay") and (len(uploads) != 1 or len(query.targets) != 1):
        raise Unprocessable(
            f"format={format} takes exactly one image and one target ({len(uploads)} images, "
            f"{len(query.targets)} targets sent); use format=json or npy"
        )
    with (await first_batcher(model, query.method, settings)).announce():  # its first run is on its way
        decoded = await inference.decode(model, uploads, keep=format in ("png", "overlay"))
    result = await run_explain(model, decoded.tensor, query, settings)
    labels = model.manifest.labels
    probs = softmax(result.logits)
    preds = top_k(probs, labels, 5)
    headers = {"X-Striate-Method": result.method}
    if format == "npy":
        headers |= {"X-Striate-Model": f"{model.name}/{model.version}"}
        return Response(content=npy_bytes(result.cams), media_type=NPY, headers=headers)
    if format == "json":
        results = []
        for i, pred in enumerate(preds):
            explanations = []
            for j, t in enumerate(result.explained[i]):
                score_value = None
                if result.scores is not None:
                    score_value = {
                        "name": query.score,
                        "value": float(result.scores[i, j]),
                        "higher_is_better": SCORES[query.score].higher_is_better,
                    }
                explanations.append(
                    {
                        "target": {"label": labels[t], "index": int(t), "probability": float(probs[i, t])},
                        "cam": result.cams[i, j].tolist(),
                        "score": score_value,
                    }
                )
            first = explanations[0]
            results.append(
                {"prediction": pred, "target": first["target"], "cam": first["cam"], "explanations": explanations}
            )
        return ExplainResponse(
            model=model.name,
            version=model.version,
            method=result.method,
            target_layer=result.target_layer,
            results=results,
        )
    t = int(result.explained[0, 0])
    headers |= prediction_headers(model, preds[0])
    headers |= {"X-Striate-Target-Label": header_value(labels[t]), "X-Striate-Target-Index": str(t)}
    if result.scores is not None:
        headers |= {"X-Striate-Score": f"{query.score}={result.scores[0, 0]:.6f}"}
    spec = model.manifest.preprocessing
    image = decoded.images[0]
    cam = result.cams[0, 0]
    data = heatmap_png(cam, image.size, spec) if format == "png" else overlay_png(cam, image, spec, alpha)
    return png_response(data, headers)
