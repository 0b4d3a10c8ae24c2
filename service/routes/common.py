"""What the routes share: the documented error statuses, both URL forms of a model route, the
documented image body, prediction headers.

Every route declares each status it sends with `error_responses(...)` (or `model_route`, which does
it for image routes), so the OpenAPI document lists them with the JSON error schema;
`install_openapi` then drops FastAPI's automatic 422 (its own body shape, which we never send) in
favour of ours on v1 and removes it on v2, whose bad input is a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from service.errors import ErrorBody, Unprocessable, V2ErrorBody, is_v2
from service.repository import LoadedModel

ERROR_MEANINGS = {
    400: "bad input: an image, body or tensor that cannot be used (the message says which)",
    401: "an API key is required (the server runs with STRIATE_API_KEY)",
    404: "no such model, version or route",
    409: "the request conflicts with the server's state or mode",
    413: "the body, an image or the number of images is over a limit",
    415: "a content type this route does not take",
    422: "a parameter with a value the route cannot use",
    503: "not ready, shutting down, or the queue is full (retry after Retry-After seconds)",
}

# What every image route (v1 POST /models/{name}[/versions/{v}]/<suffix>) can answer besides 200.
IMAGE_ROUTE_ERRORS = (400, 401, 404, 413, 415, 422, 503)


def error_responses(*statuses: int, v2: bool = False) -> dict[int | str, dict]:
    """OpenAPI `responses` for the error statuses a route sends, each with the JSON error schema."""
    body = V2ErrorBody if v2 else ErrorBody
    return {status: {"model": body, "description": ERROR_MEANINGS[status]} for status in statuses}


async def version_path(
    version: Annotated[str, Path(description="a version number (1, 2, ...)", examples=["1"])],
) -> None:
    """Documents the `{version}` segment; the model dependency reads it from the path."""


def model_route(router: APIRouter, method: str, suffix: str, **kwargs) -> Callable:
    """Register a route at /models/{name}<suffix> and /models/{name}/versions/{version}<suffix>
    (the latter with a documented `version` path parameter, the former without a phantom one)."""

    def wrap(fn: Callable) -> Callable:
        add = getattr(router, method)
        add(f"/models/{{name}}{suffix}", **kwargs)(fn)
        versioned = kwargs | {
            "summary": f"{kwargs.get('summary', fn.__name__)} (one version)",
            "dependencies": [*kwargs.get("dependencies", []), Depends(version_path)],
        }
        add(f"/models/{{name}}/versions/{{version}}{suffix}", **versioned)(fn)
        return fn

    return wrap


class DirectRoute(APIRoute):
    """A route whose endpoint has a `direct(request)` twin that serves it: the twin reads the path,
    query, headers and body itself, so a request skips FastAPI's dependency resolution and parameter
    validation (on a small model, a sizeable part of a request's CPU). FastAPI still routes it and
    documents it from the endpoint's signature, dependencies and responses; the twin must do what
    they declare (the API tests hold the two together). Endpoints without a twin are served as usual.
    """

    def get_route_handler(self):
        direct = getattr(self.endpoint, "direct", None)
        return direct if direct is not None else super().get_route_handler()


def serves(endpoint: Callable) -> Callable[[Callable], Callable]:
    """Decorator: the function below is `endpoint`'s `direct` twin (see `DirectRoute`)."""

    def attach(direct: Callable) -> Callable:
        endpoint.direct = direct  # type: ignore[attr-defined]
        return direct

    return attach


class InvalidParameter(Unprocessable):
    code = "invalid_parameter"  # the code FastAPI's own parameter validation answers with


class QueryParam:
    """One query parameter validated as FastAPI would (same type, bounds and 422 message), for
    `DirectRoute` twins; `annotation` is the endpoint's own `Annotated[type, Query(...)]`."""

    def __init__(self, name: str, annotation: object, default: object) -> None:
        self.name, self.default = name, default
        self._adapter = TypeAdapter(annotation)

    def __call__(self, request: Request):
        raw = request.query_params.get(self.name)
        if raw is None:
            return self.default
        try:
            return self._adapter.validate_python(raw)
        except ValidationError as exc:
            messages = "; ".join(f"query.{self.name}: {err['msg']}" for err in exc.errors())
            raise InvalidParameter(messages) from None


def install_openapi(app: FastAPI) -> None:
    """Make the OpenAPI document state our error bodies only (see the module docstring)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            ours = {"$ref": "#/components/schemas/ErrorBody"}
            for path, operations in spec.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    auto = responses.get("422", {}).get("content", {}).get("application/json", {})
                    if auto.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        if is_v2(path):
                            del responses["422"]
                        else:
                            auto["schema"] = ours
                            responses["422"]["description"] = ERROR_MEANINGS[422]
            schemas = spec.get("components", {}).get("schemas", {})
            schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"))
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            if not app.state.settings.api_key:  # the routes are open: no scheme is needed
                spec.get("components", {}).pop("securitySchemes", None)
                for operations in spec.get("paths", {}).values():
                    for operation in operations.values():
                        operation.pop("security", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


# An 8x8 sklearn digit (a "3") as a base64 PNG, for the OpenAPI example.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAARElEQVR42jXGMRGAMBAAsBzHzkuolJeCBHBQB0jAAg4qoRbqoEhgIlNwzB5Q"
    "+z4TSvSOxYgyAojW/t3VQs3Mzcp7eU4fVhgPr6U3F5oAAAAASUVORK5CYII="
)

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "one or many images: multipart files (any field name), a raw image body, "
        "or JSON with base64 (a data URL prefix is allowed)",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "byte"}}
                    },
                },
                "example": {"images": [EXAMPLE_PNG]},
            },
        },
    }
}

NPY = "application/x-npy"


def model_post(router: APIRouter, suffix: str, **kwargs) -> Callable:
    """An image route: POST at both URL forms, the image body and every status it can send documented."""
    extra = {**IMAGE_BODY, **kwargs.pop("openapi_extra", {})}
    responses = error_responses(*IMAGE_ROUTE_ERRORS) | kwargs.pop("responses", {})
    return model_route(router, "post", suffix, openapi_extra=extra, responses=responses, **kwargs)


def wants_npy(accept: str | None, fmt: str | None) -> bool:
    return fmt == "npy" or (fmt is None and NPY in (accept or ""))


def header_value(text: str) -> str:
    """Header-safe text (labels may be any Unicode): percent-encoded UTF-8."""
    return quote(text, safe=" !#$&'()*+,/:;=?@[]^_`{|}~-.")


def prediction_headers(model: LoadedModel, pred: dict, prefix: str = "X-Striate") -> dict[str, str]:
    return {
        f"{prefix}-Model": f"{model.name}/{model.version}",
        f"{prefix}-Label": header_value(pred["label"]),
        f"{prefix}-Class-Index": str(pred["index"]),
        f"{prefix}-Probability": f"{pred['probability']:.6f}",
    }


def png_response(data: bytes, headers: dict[str, str]) -> Response:
    return Response(content=data, media_type="image/png", headers=headers)


JsonOrPng = Literal["json", "png", "overlay"]
