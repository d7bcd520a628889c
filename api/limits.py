"""What a request may cost before it is let in: the API key, checked before the body is read (``KeyFirstMiddleware``),
and hard limits on request bodies, enforced before and while the body streams in (``BodyLimitMiddleware``).

Starlette would otherwise take an arbitrarily large multipart body, for as long as its client cares to send it,
before any route code runs. ``BodyLimitMiddleware`` answers 413 at once when ``Content-Length`` is over the size
limit, and cuts a body off (chunked uploads, or a lying ``Content-Length``) as soon as the bytes received cross it,
or when the whole body has not arrived within the body timeout (408): the app then sees a client disconnect, and the
caller gets the 413 or 408, with the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError


class BodyLimitMiddleware:
    """At most ``limit`` bytes of body (413), all of it within ``timeout_s`` seconds of the request's start (408)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 300.0) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def _reject(self, send: Send, late: bool = False) -> None:
        if late:
            status, code, message = 408, "request_timeout", f"the request body did not arrive within {self.timeout_s:g} s"
        else:
            status, code, message = 413, "request_too_large", f"the request body is larger than {self.limit} bytes; send a smaller zip"
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        state: dict[str, Any] = {"seen": 0, "over": False, "late": False, "started": False, "complete": False}
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            if state["complete"]:  # after the body, receive() only waits for a disconnect (a stream's whole life)
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                state["over"] = state["late"] = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                state["complete"] = not message.get("more_body", False)
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"] and not state["started"]:
                return  # the app's reaction to the cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._reject(send, late=state["late"])


# Paths a caller without a key may reach when keys are required: health, the API's description, signed artifact links
# (their signature is the credential), the browser gallery's page shell (it sends the key itself).
OPEN_PREFIXES = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/blobs/", "/v2/health", "/ui", "/favicon.ico")


class KeyFirstMiddleware:
    """With API keys required, the key is checked from the headers before any of the body is read: a request without
    a valid key gets its 401 at once and the connection is closed, so a key-less client cannot make the server hold an
    upload. ``/metrics`` needs a key too. The routes check the tenant again (from the key cache, no second lookup)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc = getattr(scope["app"].state, "services", None) if "app" in scope else None
        if scope["type"] != "http" or svc is None or not svc.settings.auth_required:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in ("/", "/v2") or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            if svc.auth.cached_tenant(conn) is None:
                await run_in_threadpool(svc.auth.tenant, conn)
        except ApiError as exc:
            body = json.dumps({"error": exc.message} if path.startswith("/v2") else
                              {"error": {"code": exc.code, "message": exc.message}}).encode()
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b"Bearer"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
