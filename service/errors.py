"""Errors as JSON: `{"error": {"code", "message"}}` on v1, `{"error": "message"}` on v2 (KServe)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("striate.service")


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable keyword, e.g. invalid_image, not_found, payload_too_large")
    message: str = Field(description="what was wrong, and what to do")


class ErrorBody(BaseModel):
    """The v1 error answer."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """The Open Inference Protocol's error answer."""

    error: str = Field(description="what was wrong, and what to do")


class ServiceError(Exception):
    """An error the client can act on; `status` is the HTTP status, `code` a stable keyword."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(ServiceError):
    pass


class InvalidImage(ServiceError):
    code = "invalid_image"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ServiceError):
    status, code = 422, "unprocessable"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


def is_v2(path: str) -> bool:
    """The Open Inference Protocol's routes, whose errors are `{"error": "message"}` (KServe)."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, status: int, code: str, message: str, headers=None) -> JSONResponse:
    body = {"error": message} if is_v2(path) else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status = 400 if is_v2(request.url.path) else 422  # KServe answers bad requests with 400
        return error_response(request.url.path, status, "invalid_parameter", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(request.url.path, exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal", f"internal error: {type(exc).__name__}")
