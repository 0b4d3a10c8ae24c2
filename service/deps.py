"""FastAPI dependencies as `Annotated` aliases: a route's signature says what it needs.

All are `async def`: they do no blocking work, and FastAPI would run plain `def` dependencies in
a worker thread (a thread round trip per dependency per request).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from service.errors import Unauthorized
from service.images import Upload, read_uploads
from service.inference import Inference
from service.repository import LoadedModel, Repository
from service.settings import Settings


async def app_settings(request: Request) -> Settings:
    """The settings `create_app` was given (by default `get_settings()`, from the environment)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


async def get_repository(request: Request) -> Repository:
    return request.app.state.repository


async def get_inference(request: Request) -> Inference:
    return request.app.state.inference


RepositoryDep = Annotated[Repository, Depends(get_repository)]
InferenceDep = Annotated[Inference, Depends(get_inference)]


async def get_model(request: Request, name: str, repository: RepositoryDep) -> AsyncIterator[LoadedModel]:
    """The model version the URL names, leased for the whole request: an unload or a newer copy
    swapped in meanwhile waits for this request to finish on the version it started on.

    `{version}` is read from the path (routes with it declare it through `model_route`), so the
    unversioned routes have no phantom `version` parameter."""
    with repository.get(name, request.path_params.get("version")).lease() as model:
        yield model


ModelDep = Annotated[LoadedModel, Depends(get_model)]


async def get_uploads(request: Request, settings: SettingsDep) -> list[Upload]:
    return await read_uploads(request, settings)


UploadsDep = Annotated[list[Upload], Depends(get_uploads)]


# Declared for the OpenAPI document only (/docs offers Authorize, "Try it out" sends the key);
# `check_api_key` reads the headers itself. `install_openapi` drops them when no key is set.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer")


async def check_api_key(request: Request, settings: Settings) -> None:
    """With `STRIATE_API_KEY` set: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if not settings.api_key:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise Unauthorized(
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _header: Annotated[str | None, Security(_api_key_header)],
    _token: Annotated[object, Security(_bearer)],
) -> None:
    await check_api_key(request, settings)


ApiKey = Depends(require_api_key)
