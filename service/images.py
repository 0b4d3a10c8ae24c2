"""Images out of a request body: multipart files, a raw `image/*` body, or JSON with base64."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

ACCEPTED = "multipart/form-data, image/*, application/octet-stream or application/json"


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """Every image in the body, in order; raises a 4xx `ServiceError` saying what is wrong."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        uploads = await _multipart(request, settings)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        uploads = [Upload(await request.body(), "body")]
    elif ctype == "application/json" or ctype.endswith("+json"):
        uploads = _json(await request.body())
    else:
        raise UnsupportedMediaType(f"content type {ctype or '(none)'!r} is not accepted; send {ACCEPTED}")
    if not uploads:
        raise BadRequest("the request holds no image")
    if len(uploads) > settings.max_images:
        raise PayloadTooLarge(f"{len(uploads)} images in one request, over the limit of {settings.max_images}")
    return uploads


async def _multipart(request: Request, settings: Settings) -> list[Upload]:
    form = await request.form(max_files=settings.max_images + 1, max_fields=100, max_part_size=settings.max_body_bytes)
    uploads = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            uploads.append(Upload(await value.read(), value.filename or key))
    await form.close()
    return uploads


def _json(body: bytes) -> list[Upload]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not ({"images", "image"} & doc.keys()):
        raise BadRequest('JSON bodies look like {"images": ["<base64>", ...]} or {"image": "<base64>"}')
    items = doc.get("images", [doc.get("image")])
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BadRequest('"images" must be a list of base64 strings')
    return [Upload(_b64(item, i), f"images[{i}]") for i, item in enumerate(items)]


def _b64(text: str, index: int) -> bytes:
    if text.startswith("data:"):  # data URL: data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"images[{index}] is not valid base64") from None
