"""The sampling fast path: ``GET /sample`` and ``GET /jobs/{id}/sample`` answered from the caches, outside
FastAPI's routing.

This is the request users repeat most, and its own work (the generator's forward and the PNG encoding) is
small, so FastAPI's routing, dependency solving and query validation were a large share of it (profiled:
`solve_dependencies` and route matching lead; figures in docs/benchmarks.md, "Design figures").

This ASGI middleware answers a request only when every answer it needs is already in memory:
  * the caller's tenant, from :meth:`Authenticator.cached_tenant`;
  * the job's model key, from ``svc.finished``, or ``svc.latest`` for ``/sample``;
  * the loaded model, from ``svc.models``;
  * well-formed query parameters, checked by the same rules the route declares.

It then renders with the routes' own ``_render``, on the event-loop thread like the routes
(api/compute.py), so the bytes and headers are the ones the FastAPI route would send.

Anything else falls through to the FastAPI routes unchanged: a first request, a bad or unknown parameter,
a key to verify, an error of any kind. Those routes produce the documented JSON errors and fill the
caches. Since the middleware only reads the caches, it never answers differently from the routes.
tests/api/test_fastpath.py checks this, byte for byte.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError
from api.services.sampling import render

_JOB_SAMPLE = re.compile(r"^/jobs/([^/]{1,64})/sample$")
_UINT = re.compile(r"^[0-9]{1,10}$")
_N_MAX = 256  # the routes' Query(le=256)
_SEED_MAX = 2**31 - 1


def _params(query: bytes, allow_job: bool) -> dict[str, Any] | None:
    """n, seed, format (and job) when they are exactly what the route would accept; None to fall through."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    got = dict(pairs)
    if len(got) != len(pairs) or not set(got) <= ({"n", "seed", "format", "job"} if allow_job else {"n", "seed", "format"}):
        return None  # repeated or unknown parameters: let FastAPI decide what they mean
    n, seed, fmt = got.get("n", "16"), got.get("seed", "0"), got.get("format", "png")
    if not (_UINT.match(n) and _UINT.match(seed)) or fmt not in ("png", "zip"):
        return None
    out: dict[str, Any] = {"n": int(n), "seed": int(seed), "fmt": fmt, "job": got.get("job")}
    if not (1 <= out["n"] <= _N_MAX and out["seed"] <= _SEED_MAX):
        return None
    if out["job"] is not None and not 1 <= len(out["job"]) <= 64:
        return None
    return out


class SampleFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            response = await self._try(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _try(self, scope: Scope) -> Any:
        path = scope["path"]
        if path == "/sample":
            job_id = None
        elif path.startswith("/jobs/") and (m := _JOB_SAMPLE.match(path)):
            job_id = m.group(1)
        else:
            return None
        svc = getattr(scope["app"].state, "services", None)
        if svc is None or not svc.settings.sample_fast_path:
            return None
        p = _params(scope.get("query_string", b""), allow_job=job_id is None)
        if p is None or p["n"] > svc.settings.sample_max_n:
            return None
        try:
            tenant = svc.auth.cached_tenant(HTTPConnection(scope))
        except ApiError:
            return None  # e.g. a missing key: the route answers the 401
        if tenant is None:
            return None
        job_id = job_id or p["job"]
        if job_id is None:
            latest = svc.latest.get(tenant)
            if latest is None:
                return None
            job_id, key = latest
        else:
            hit = svc.finished.get(job_id)
            if hit is None or hit[0] != tenant:
                return None
            key = hit[1]
        model = svc.models.peek(key)
        if model is None:
            return None
        try:  # the route's renderer: same bytes, same headers
            response = await render(svc, job_id, model, p["n"], p["seed"], p["fmt"])
        except Exception:  # noqa: BLE001 - rendering has no side effects: the route redoes it and reports the error
            return None
        svc.fast_path_hits += 1
        return response
