"""Limits on request bodies: their size, enforced on the stream (a chunked body has no
Content-Length to check, and Starlette reads whatever arrives; pure ASGI, so it sees every chunk
before the app does), and how deeply a parsed body nests."""

from __future__ import annotations

import json
from typing import Any

from annotator.errors import AnnotatorError

MAX_JSON_DEPTH = 64  # Label Studio's payloads nest a few levels; task data a few more


def check_depth(payload: Any, *, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse (`AnnotatorError`, a 400) a parsed body nested deeper than ``limit``: whatever walks
    or stores it later (the JSON columns' encoder, a recursive reader) would overflow the stack and
    answer 500. Counted without recursion."""
    stack = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise AnnotatorError(f"{what} is nested more than {limit} levels deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


class BodyTooLargeError(Exception):
    """Raised into the app's ``receive`` once the body passes the limit."""


class BodyLimitMiddleware:
    """Answers 413 once a request body passes ``max_bytes`` (declared or streamed), without reading
    the rest; whatever the app was about to answer is dropped."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the app's own answer to a body it could not read: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # noqa: BLE001 - ours, or what the app made of it (wrapped in an ExceptionGroup by
            if not refused:  # BaseHTTPMiddleware's task group, or a ClientDisconnect); anything else goes on up
                raise
        if refused and not started:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
