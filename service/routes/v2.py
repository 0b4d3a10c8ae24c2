"""Open Inference Protocol (KServe v2) on the same port, Triton binary-data extension included."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, RepositoryDep, SettingsDep
from service.errors import NotReady
from service.oip import INFER_REQUEST_SCHEMA, INFER_RESPONSE_SCHEMA, decompress, encode_response, parse_request
from service.routes.common import error_responses, model_route
from service.routes.v2_io import image_tensor, infer_response, wanted_outputs
from service.tensors import check_inputs, classification, explain_names, input_spec, output_specs, run_tensors
from striate import __version__

TAGS = ["open inference protocol (v2)"]
health = APIRouter(prefix="/v2", tags=TAGS)
models = APIRouter(prefix="/v2", tags=TAGS, dependencies=[ApiKey], responses=error_responses(401, v2=True))

# Triton's names for what this server speaks beyond the core protocol.
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "explain",
]  # explain: routes/v2_explain.py

NOT_FOUND = error_responses(404, v2=True)


@health.get("/health/live", summary="server live")
async def live() -> dict:
    return {"live": True}


@health.get("/health/ready", summary="server ready (models loaded)", responses=error_responses(503, v2=True))
async def ready(request: Request, repository: RepositoryDep) -> dict:
    if getattr(request.app.state, "draining", False):
        raise NotReady("the server is shutting down", headers={"Connection": "close"})
    if not repository.ready:
        raise NotReady("no model is loaded")
    return {"ready": True}


@models.get("", summary="server metadata")
async def server_metadata() -> dict:
    return {"name": "striate", "version": __version__, "extensions": EXTENSIONS}


@model_route(models, "get", "", summary="model metadata", responses=NOT_FOUND)
async def model_metadata(model: ModelDep, repository: RepositoryDep) -> dict:
    return {
        "name": model.name,
        "versions": [str(v) for v in repository.served_versions(model.name) or [model.version]],
        "platform": "onnxruntime_onnx",
        "inputs": [input_spec(model)],
        "outputs": output_specs(model),
    }


@model_route(models, "get", "/ready", summary="model ready", responses=NOT_FOUND)
async def model_ready(model: ModelDep) -> dict:
    return {"name": model.name, "version": str(model.version), "ready": True}


@model_route(models, "get", "/config", summary="Triton-style model configuration", responses=NOT_FOUND)
async def model_config(model: ModelDep, settings: SettingsDep) -> dict:
    spec = model.manifest.input
    inputs = [{"name": spec.name, "data_type": "TYPE_FP32", "dims": [spec.channels, spec.height, spec.width]}]
    names = explain_names(model)
    if names:
        inputs.append({"name": names[0], "data_type": "TYPE_INT64", "dims": [], "optional": True})
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": settings.max_batch_size,
        "input": inputs,
        "output": [
            {"name": o["name"], "data_type": "TYPE_" + o["datatype"], "dims": o["shape"][1:]}
            for o in output_specs(model)
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": int(settings.max_batch_delay_ms * 1000)},
    }


INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "the inference request as JSON; or, with Inference-Header-Content-Length, that JSON "
        "followed by the raw bytes of each input whose parameters give binary_data_size (Triton's "
        "binary tensor extension). Content-Encoding gzip or deflate is accepted.",
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INFER_RESPONSES = {
    200: {
        "description": "the outputs, as JSON or (binary_data) JSON followed by raw bytes",
        "content": {
            "application/json": {"schema": INFER_RESPONSE_SCHEMA},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
} | error_responses(400, 404, 413, 503, v2=True)


@model_route(
    models,
    "post",
    "/infer",
    summary="inference (JSON tensors or Triton binary data)",
    description="Input `image`: FP32 [N, C, H, W] preprocessed tensors, or BYTES [N] encoded images "
    "(JPEG, PNG...; binary, or base64 strings in JSON) that the server decodes and preprocesses. "
    "Optional `target` INT64 [N] and output `cam` give Grad-CAM maps. `parameters.classification = k` "
    'on a requested output returns its top k as BYTES "score:index:label". Bad input: 400 '
    '`{"error": "..."}`.',
    openapi_extra=INFER_BODY,
    responses=INFER_RESPONSES,
    response_class=Response,
)
async def infer(
    model: ModelDep,
    request: Request,
    settings: SettingsDep,
    inference: InferenceDep,
    inference_header_content_length: Annotated[
        str | None, Header(description="length of the JSON part when binary tensors follow it")
    ] = None,
) -> Response:
    body = decompress(await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes)
    req = parse_request(body, inference_header_content_length)
    image, target = check_inputs(model, req.inputs, settings.max_images)
    known = [o["name"] for o in output_specs(model)]
    wanted = wanted_outputs(req, known, [o.name for o in model.manifest.outputs], f"{model.name} has")
    image = await image_tensor(inference, model, image)
    arrays = await run_tensors(model, image, target, list(wanted))
    for name, k in req.classification.items():
        arrays[name] = classification(model, name, arrays[name], k)
    body, header_length = encode_response(
        model.name, model.version, req.id, {n: (arrays[n], wanted[n]) for n in wanted}
    )
    return infer_response(body, header_length)
