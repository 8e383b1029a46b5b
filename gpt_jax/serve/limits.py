"""Request size limit for the server: a body over `max_bytes` is a 413 in OpenAI's error shape.

A pure ASGI middleware (not starlette's BaseHTTPMiddleware, which re-streams every response):
the body is read first, at most `max_bytes` of it, and replayed to the app, so nothing past the
limit is ever buffered and a lying or missing Content-Length cannot get around it. Our routes take
JSON bodies of a few KiB, so holding one in memory costs nothing.
"""
from __future__ import annotations

import json

from gpt_jax.serve.protocol import APIError


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, send) -> None:
        err = APIError(413, f"the request body is over {self.max_bytes} bytes",
                       code="request_too_large")
        payload = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list, receive):
    async def replayed():
        return messages.pop(0) if messages else await receive()
    return replayed
