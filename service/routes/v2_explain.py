"""POST /v2/models/{name}[/versions/{v}]/explain: explanations over the Open Inference Protocol.

The Open Inference Protocol has no explain verb; this route takes infer's request and gives infer's
response (Triton's binary-data extension included), so a stock `tritonclient.http` client can call
it through its low-level request API. Server metadata lists it as the `explain` extension.

Request: input `image` (FP32 [N, C, H, W] preprocessed, or BYTES [N] encoded images); `parameters`
`method`, `targets` (class indices or labels: a list or a comma-separated string) or `top_targets`,
and `score`, as on v1. Outputs: `cam` FP32 [N, T, h, w], `explained` INT64 [N, T] (the classes
explained), `logits` FP32 [N, K] and, with a score, `score` FP64 [N, T]. The response's
`parameters` name the method and the target layer.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, SettingsDep
from service.errors import BadRequest
from service.explain import explain as run_explain
from service.explain import parse_query
from service.oip import decompress, encode_response, parse_request
from service.routes.common import error_responses, model_route
from service.routes.v2 import INFER_BODY, INFER_RESPONSES
from service.routes.v2_io import image_tensor, infer_response, wanted_outputs
from service.tensors import check_inputs

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], dependencies=[ApiKey])

EXTENSION = "explain"
OUTPUTS = ("cam", "explained", "logits", "score")
# As infer's, plus 422: a method or class the model lacks, or over a targets/passes limit.
RESPONSES = INFER_RESPONSES | error_responses(422, v2=True)


def _targets(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, int | str) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    raise BadRequest('parameter "targets" must be a list of class indices or labels, or a comma-separated string')


def _int_or_none(name: str, value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f'parameter "{name}" must be an integer')
    return value


def _str_or_none(name: str, value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadRequest(f'parameter "{name}" must be a string')
    return value


@model_route(
    router,
    "post",
    "/explain",
    summary="explanations with infer's request and response (Triton binary data included)",
    description=__doc__.split("\n\n", 1)[1],
    openapi_extra=INFER_BODY,
    responses=RESPONSES,
    response_class=Response,
)
async def explain(model: ModelDep, request: Request, settings: SettingsDep, inference: InferenceDep) -> Response:
    body = decompress(await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes)
    req = parse_request(body, request.headers.get("inference-header-content-length"))
    image, target = check_inputs(model, req.inputs, settings.max_images)
    if target is not None:
        raise BadRequest('explain takes its classes in parameters "targets" or "top_targets", not an input')
    p = req.parameters
    query = parse_query(
        model,
        settings,
        _str_or_none("method", p.get("method")),
        _targets(p.get("targets")),
        _int_or_none("top_targets", p.get("top_targets")),
        _str_or_none("score", p.get("score")),
    )
    available = [n for n in OUTPUTS if n != "score" or query.score]
    wanted = wanted_outputs(req, available, available, "explain gives")
    result = await run_explain(model, await image_tensor(inference, model, image), query, settings)
    arrays = {"cam": result.cams, "explained": result.explained, "logits": result.logits, "score": result.scores}
    body, header_length = encode_response(
        model.name, model.version, req.id, {n: (arrays[n], wanted[n]) for n in wanted}
    )
    split = len(body) if header_length is None else header_length
    head = json.loads(body[:split])
    head["parameters"] = {"method": result.method, "target_layer": result.target_layer or ""}
    new_head = json.dumps(head, separators=(",", ":")).encode()
    return infer_response(new_head + body[split:], None if header_length is None else len(new_head))
