"""Request body size limit, enforced before any route reads the body (413 naming the limit)."""

from __future__ import annotations

from service.errors import error_response


class BodyLimitMiddleware:
    """Buffers each request body up to `max_bytes`; over it, answers 413 without reading on."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send) -> None:
        message = f"the request body is over the limit of {self.max_bytes} bytes (STRIATE_MAX_BODY_BYTES)"
        response = error_response(scope["path"], 413, "payload_too_large", message, {"Connection": "close"})
        await response(scope, receive, send)
