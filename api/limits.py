"""What a request may cost before it is let in: the API key and the tenant's request rates, checked before the body is
read (``KeyFirstMiddleware``, ``TenantRates``), and hard limits on request bodies, enforced before and while the body
streams in (``BodyLimitMiddleware``).

Starlette would otherwise take an arbitrarily large multipart body, for as long as its client cares to send it,
before any route code runs. ``BodyLimitMiddleware`` answers 413 at once when ``Content-Length`` is over the size
limit, and cuts a body off (chunked uploads, or a lying ``Content-Length``) as soon as the bytes received cross it,
or when the whole body has not arrived within the body timeout (408): the app then sees a client disconnect, and the
caller gets the 413 or 408, with the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from typing import Any

import limits
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError
from store.settings import Settings


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


UPLOADS = {("POST", "/jobs"), ("POST", "/models")}


class LocalWindows:
    """The moving window of each limit (``limits``' rate items), counted in this process: the times of the hits still in
    the window, per tenant and limit. Standing in for ``limits``' own ``memory://`` storage, which starts a timer thread
    on every hit: ``Thread.start`` waits for that thread to take the GIL, so with another Python thread busy (the sampling
    thread, an upload's parse) each check held the event loop for about 10 ms, against microseconds here
    (docs/benchmarks.md, "rate_check")."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def hit(self, item: limits.RateLimitItem, *ids: str) -> float | None:
        """Count a hit: None if it is within the limit, else the seconds until the oldest hit leaves the window."""
        now, window = time.monotonic(), item.get_expiry()
        hits = self._hits.setdefault(item.key_for(*ids), deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= item.amount:
            return hits[0] + window - now
        hits.append(now)
        return None


class TenantRates:
    """How many requests, and how many uploads, one tenant may send (``MINEGAN_RATE_LIMIT``,
    ``MINEGAN_UPLOAD_RATE_LIMIT``; ``limits``' rate strings): a moving window per tenant, counted in this API process
    (``MINEGAN_RATE_LIMIT_STORAGE=memory://``, :class:`LocalWindows`) or in a shared store for every process (e.g.
    ``redis://``: the ``limits`` package's moving-window limiter over that storage, called off the event loop).

    An upload is also a request. The upload limit is what keeps one tenant's zips from occupying the upload checker
    (api/fair.py serves tenants in turn, but a check once started runs to its end), and since it is checked from the
    headers, a refused upload's body is never read. A refused request is not counted, and is answered only after
    ``MINEGAN_RATE_LIMIT_DELAY_S`` (or its ``Retry-After``, if sooner): a client that does not wait for ``Retry-After``
    is slowed to a request per connection per delay instead of being answered as fast as it sends, as nginx's
    ``limit_req`` holds back excess requests (docs/benchmarks.md, "tenant_pressure")."""

    def __init__(self, settings: Settings) -> None:
        self.keyed, self.delay_s = settings.auth_required, settings.rate_limit_delay_s
        self.requests = limits.parse_many(settings.rate_limit) if settings.rate_limit.strip() else []
        self.uploads = limits.parse_many(settings.upload_rate_limit) if settings.upload_rate_limit.strip() else []
        self.blocking = not settings.rate_limit_storage.startswith("memory")  # a network store: off the event loop
        self.local = None if self.blocking else LocalWindows()
        self.shared = MovingWindowRateLimiter(storage_from_string(settings.rate_limit_storage)) if self.blocking else None

    def _wait(self, item: limits.RateLimitItem, kind: str, tenant: str) -> float | None:
        if self.local is not None:
            return self.local.hit(item, kind, tenant)
        assert self.shared is not None
        if self.shared.hit(item, kind, tenant):
            return None
        return self.shared.get_window_stats(item, kind, tenant).reset_time - time.time()

    def _check(self, tenant: str, upload: bool) -> ApiError | None:
        for kind, items in (("uploads", self.uploads if upload else []), ("requests", self.requests)):
            for item in items:
                wait = self._wait(item, kind, tenant)
                if wait is not None:
                    seconds = max(1, math.ceil(wait))
                    return ApiError(429, "rate_limited", f"tenant {tenant!r} sent more than {item.amount} {kind} per "
                                                         f"{item.multiples} {item.GRANULARITY.name}; retry in {seconds} s",
                                    {"retry-after": str(seconds)})
        return None

    async def check(self, tenant: str, upload: bool) -> ApiError | None:
        """None when the request may go on (always, without keys: there are no tenants to share among); else the 429
        to answer (it carries ``Retry-After``)."""
        if not self.keyed or (not self.requests and not (upload and self.uploads)):
            return None
        refused = await run_in_threadpool(self._check, tenant, upload) if self.blocking else self._check(tenant, upload)
        if refused is not None and self.delay_s > 0:
            await asyncio.sleep(min(self.delay_s, float((refused.headers or {}).get("retry-after", 0))))
        return refused


class KeyFirstMiddleware:
    """With API keys required, the key is checked from the headers before any of the body is read: a request without
    a valid key gets its 401 at once and the connection is closed, so a key-less client cannot make the server hold an
    upload. ``/metrics`` needs a key too. The tenant's request rates are checked here too (``TenantRates``), so a
    tenant past its limit gets its 429 before its body is read. The routes check the tenant again (from the key
    cache, no second lookup)."""

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
            tenant = svc.auth.cached_tenant(conn)
            if tenant is None:
                tenant = await run_in_threadpool(svc.auth.tenant, conn)
        except ApiError as exc:
            await self._refuse(send, path, exc, [(b"www-authenticate", b"Bearer")])
            return
        refused = await svc.rates.check(tenant, (scope.get("method", ""), path.rstrip("/")) in UPLOADS)
        if refused is not None:
            await self._refuse(send, path, refused, [(k.encode(), v.encode()) for k, v in (refused.headers or {}).items()])
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Send, path: str, exc: ApiError, headers: list[tuple[bytes, bytes]]) -> None:
        """The error, and the connection closed: the request's body (if any) is not read."""
        body = json.dumps({"error": exc.message} if path.startswith("/v2") else
                          {"error": {"code": exc.code, "message": exc.message}}).encode()
        await send({"type": "http.response.start", "status": exc.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
