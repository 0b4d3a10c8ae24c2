"""What the image routes share: both URL forms, the documented request body, prediction headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import Response

from service.repository import LoadedModel

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
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"}}},
                },
                "example": {"images": [EXAMPLE_PNG]},
            },
        },
    }
}

NPY = "application/x-npy"


def model_post(router: APIRouter, suffix: str, **kwargs) -> Callable:
    """Register a POST route at /models/{name}<suffix> and /models/{name}/versions/{version}<suffix>."""

    def wrap(fn: Callable) -> Callable:
        extra = {**IMAGE_BODY, **kwargs.pop("openapi_extra", {})}
        router.post(f"/models/{{name}}{suffix}", openapi_extra=extra, **kwargs)(fn)
        versioned = {**kwargs, "summary": f"{kwargs.get('summary', fn.__name__)} (one version)"}
        router.post(f"/models/{{name}}/versions/{{version}}{suffix}", openapi_extra=extra, **versioned)(fn)
        return fn

    return wrap


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
