"""Triton's model repository extension: the index, and (STRIATE_MODEL_CONTROL=explicit) load/unload.

Stock `tritonclient.http` drives it: `get_model_repository_index()`, `load_model(name)`,
`unload_model(name)`. A load brings the model in line with its folder and version policy (new and
changed versions load; the rest retire after their requests finish); a version that fails leaves
what was serving in place, and the answer is a 400 naming the error. An unload waits for the
requests in flight (at most STRIATE_DRAIN_GRACE seconds) before it answers.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from service.deps import ApiKey, RepositoryDep, SettingsDep
from service.errors import BadRequest, Conflict, NotFound
from service.routes.common import error_responses

router = APIRouter(
    prefix="/v2/repository",
    tags=["model repository (v2)"],
    dependencies=[ApiKey],
    responses=error_responses(400, 401, v2=True),
)

INDEX_ROW = {
    "type": "object",
    "required": ["name", "state"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "state": {"type": "string", "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]},
        "reason": {"type": "string"},
    },
}


def _body(payload: bytes, fields: dict[str, type]) -> dict:
    """An optional JSON object body; unknown parameters that would change a model are refused."""
    if not payload.strip():
        return {}
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    for key, kind in fields.items():
        if key in doc and not isinstance(doc[key], kind):
            raise BadRequest(f'"{key}" must be {kind.__name__}')
    return doc


def _explicit(settings) -> None:
    if settings.model_control != "explicit":
        raise Conflict(
            f"models are loaded and unloaded by the server (STRIATE_MODEL_CONTROL={settings.model_control}); "
            "start it with STRIATE_MODEL_CONTROL=explicit to use this API"
        )


def _control_body(payload: bytes) -> dict:
    params = _body(payload, {"parameters": dict}).get("parameters") or {}
    overrides = sorted(k for k in params if k == "config" or k.startswith("file:"))
    if overrides:
        raise BadRequest(f"loading with {overrides} is not supported: place the bundle in the repository instead")
    return params


@router.post(
    "/index",
    summary="every model and version in the repository, with its state",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}
            },
        }
    },
    responses={200: {"content": {"application/json": {"schema": {"type": "array", "items": INDEX_ROW}}}}},
)
async def index(request: Request, repository: RepositoryDep) -> list[dict]:
    only_ready = bool(_body(await request.body(), {"ready": bool}).get("ready", False))
    return [row for row in repository.index() if not only_ready or row["state"] == "READY"]


CONTROL_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "object", "properties": {"parameters": {"type": "object"}}}}
        },
    }
}


@router.post(
    "/models/{name}/load",
    summary="load a model (or reload what changed), per its version policy",
    openapi_extra=CONTROL_BODY,
    responses=error_responses(404, 409, v2=True),
)
async def load(name: str, request: Request, repository: RepositoryDep, settings: SettingsDep) -> dict:
    _explicit(settings)
    _control_body(await request.body())
    if name not in repository.model_names():
        raise NotFound(f"no model folder {name!r} in the repository; it has {repository.model_names()}")
    plan = await repository.sync(name)
    failed = {version: st.error for version, st in plan.status.items() if st.error}
    serving = repository.served_versions(name)
    if failed:
        errors = "; ".join(f"version {v}: {error}" for v, error in sorted(failed.items()))
        still = f" (still serving versions {serving})" if serving else ""
        raise BadRequest(f"failed to load {name!r}: {errors}{still}")
    if not serving:
        raise BadRequest(f"model {name!r} has no version to serve (see POST /v2/repository/index)")
    return {"name": name, "versions": [str(v) for v in serving]}


@router.post(
    "/models/{name}/unload",
    summary="unload a model after the requests it holds have finished",
    openapi_extra=CONTROL_BODY,
    responses=error_responses(404, 409, v2=True),
)
async def unload(name: str, request: Request, repository: RepositoryDep, settings: SettingsDep) -> dict:
    _explicit(settings)
    _control_body(await request.body())
    retired = await repository.unload(name)
    return {"name": name, "unloaded": [str(m.version) for m in retired]}
