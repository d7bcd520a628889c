"""``X-Request-Id``: every request gets one (the caller's, if it sent a sane one), every log record of the request
carries it (``store/logs.py``), the job a request submits records it for its worker's logs, and the response
returns it."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store import logs


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        rid = logs.new_request_id(given)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        with logs.bound(request_id=rid, tenant=None, job_id=None):
            await self.app(scope, receive, send_with_id)
