"""Request-body limits and admin authentication that run before a body is read.

An ASGI middleware in front of the whole app (see docs/control-protocol.md, "Limits"):

- ``/machine/...`` bodies are limited to ``node_limit`` bytes (64 KiB), every other
  path outside ``/api/v1`` and ``/admin/`` likewise; ``/api/v1`` and web console bodies
  to ``admin_limit`` (2 MiB: a policy is at most 1 MiB of text, escaped in JSON or a form).
- A ``Content-Length`` over the limit is answered 413 at once; a body streamed without
  one is read only up to the limit plus one chunk, then answered 413. Either way the
  connection is closed after the answer (the rest of the body is never read).
- ``/api/v1`` (but its OpenAPI document) needs a valid ``Authorization: Bearer`` API key
  before any of the body is read: 401 otherwise. The route's own key check still runs.

The body is read here, at most ``limit`` bytes, and handed on to the app unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NODE_BODY_LIMIT = 64 * 1024
ADMIN_BODY_LIMIT = 2 * 1024 * 1024
ADMIN_PREFIX = "/api/v1"
CONSOLE_PREFIX = "/admin"
PUBLIC_ADMIN_PATHS = frozenset({ADMIN_PREFIX + "/openapi.json"})

# Checks "Bearer <token>"'s token; returns None if valid, else the reason.
Authenticator = Callable[[str], Awaitable[str | None]]


class BodyLimits:
    def __init__(
        self,
        app: ASGIApp,
        authenticate: Authenticator,
        node_limit: int = NODE_BODY_LIMIT,
        admin_limit: int = ADMIN_BODY_LIMIT,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.node_limit = node_limit
        self.admin_limit = admin_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        admin = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        console = path.startswith(CONSOLE_PREFIX + "/")  # the web console's policy editor
        limit = self.admin_limit if admin or console else self.node_limit
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "malformed Content-Length", admin)
                return
            if declared > limit:
                await _answer(send, 413, f"request body larger than {limit} bytes", admin)
                return
        if admin and path not in PUBLIC_ADMIN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                reason: str | None = "missing API key: send Authorization: Bearer weftapi-..."
            else:
                reason = await self.authenticate(token.strip())
            if reason is not None:
                await _answer(send, 401, reason, admin)
                return
        # Read the body here, never more than limit + one chunk.
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnect: Message | None = None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                disconnect = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, f"request body larger than {limit} bytes", admin)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        if disconnect is not None:
            return  # the client went away before its body was complete
        body = b"".join(chunks)
        chunks.clear()
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, message: str, admin: bool) -> None:
    if admin:
        body = json.dumps({"error": message}).encode()
        kind = b"application/json"
    else:
        body = (message + "\n").encode()
        kind = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
