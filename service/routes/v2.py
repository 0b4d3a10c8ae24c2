"""Open Inference Protocol (KServe v2) on the same port, Triton binary-data extension included."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import ApiKey, InferenceDep, ModelDep, RepositoryDep, SettingsDep
from service.errors import BadRequest, NotReady
from service.oip import decompress, encode_response, parse_request
from service.tensors import check_inputs, explain_names, input_spec, output_specs, run_tensors
from striate import __version__

health = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
models = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], dependencies=[ApiKey])

EXTENSIONS = ["binary_tensor_data", "model_configuration", "explain"]  # explain: routes/v2_explain.py


@health.get("/health/live", summary="server live")
async def live() -> dict:
    return {"live": True}


@health.get("/health/ready", summary="server ready (models loaded)")
async def ready(repository: RepositoryDep) -> dict:
    if not repository.ready:
        raise NotReady("no model is loaded")
    return {"ready": True}


@models.get("", summary="server metadata")
async def server_metadata() -> dict:
    return {"name": "striate", "version": __version__, "extensions": EXTENSIONS}


@models.get("/models/{name}", summary="model metadata")
@models.get("/models/{name}/versions/{version}", summary="model version metadata")
async def model_metadata(model: ModelDep, repository: RepositoryDep) -> dict:
    return {
        "name": model.name,
        "versions": [str(v) for v in sorted(repository.models[model.name])],
        "platform": "onnxruntime_onnx",
        "inputs": [input_spec(model)],
        "outputs": output_specs(model),
    }


@models.get("/models/{name}/ready", summary="model ready")
@models.get("/models/{name}/versions/{version}/ready", summary="model version ready")
async def model_ready(model: ModelDep) -> dict:
    return {"name": model.name, "version": str(model.version), "ready": True}


@models.get("/models/{name}/config", summary="Triton-style model configuration")
@models.get("/models/{name}/versions/{version}/config", summary="Triton-style model configuration")
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


@models.post(
    "/models/{name}/infer",
    summary="inference (JSON tensors or Triton binary data)",
    description="Input `image`: FP32 [N, C, H, W] preprocessed tensors, or BYTES [N] encoded images "
    "(JPEG, PNG...; binary, or base64 strings in JSON) that the server decodes and preprocesses. "
    'Optional `target` INT64 [N] and output `cam` give Grad-CAM maps. Errors: 400 with {"error": ...}.',
)
@models.post("/models/{name}/versions/{version}/infer", summary="inference on one version")
async def infer(model: ModelDep, request: Request, settings: SettingsDep, inference: InferenceDep) -> Response:
    body = decompress(await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes)
    req = parse_request(body, request.headers.get("inference-header-content-length"))
    image, target = check_inputs(model, req.inputs, settings.max_images)
    known = [o["name"] for o in output_specs(model)]
    if req.outputs is None:
        wanted = {o.name: req.binary_default for o in model.manifest.outputs}
    else:
        unknown = sorted(set(req.outputs) - set(known))
        if unknown:
            raise BadRequest(f"unknown output(s) {unknown}; {model.name} has {known}")
        wanted = req.outputs
    if isinstance(image, list):  # BYTES: encoded images, decoded with the manifest's preprocessing
        image = (await inference.decode(model, image)).tensor
    arrays = await run_tensors(model, np.ascontiguousarray(image), target, list(wanted))
    body, header_length = encode_response(
        model.name, model.version, req.id, {n: (arrays[n], wanted[n]) for n in wanted}
    )
    if header_length is None:
        return Response(content=body, media_type="application/json")
    return Response(
        content=body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
