"""Request-body cap enforced while the body streams in, before multipart parsing spools it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MULTIPART_MARGIN", "BodySizeLimit", "too_large_detail"]

MULTIPART_MARGIN = 64 * 1024
"""Bytes allowed on top of the upload cap for the multipart envelope (boundaries, headers)."""


def too_large_detail(limit_bytes: int) -> str:
    return f"upload too large: the limit is {limit_bytes / 1e6:g} MB (settings.max_upload_mb)"


class BodySizeLimit:
    """ASGI middleware: POST bodies over ``limit + MULTIPART_MARGIN`` bytes get 413.

    A declared Content-Length over the cap is refused before any byte is read; a chunked body is
    counted as it arrives and cut off (the app sees a disconnect) once over the cap. The route
    checks the uploaded file itself against the exact cap.
    """

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes
        self.body_limit = limit_bytes + MULTIPART_MARGIN

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_detail(self.limit)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            await self._reject(send)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.body_limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(send)
