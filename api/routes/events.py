"""/jobs/{id}/events: a job's events as Server-Sent Events, replayable.

Every change of a job is recorded with it, in the same transaction (``store/jobs.py``): ``status`` (queued,
running, succeeded, failed, canceled), ``progress`` (phase, step, total_steps, losses), ``preview`` (a sample grid
stored during training, with a short-lived URL) and ``completed`` (the final status, the error or the metrics),
which ends the stream. Each event's SSE ``id`` is its sequence number: a client that reconnects with
``Last-Event-ID`` (browsers' EventSource do) gets exactly the events it has not seen, so it misses nothing and
sees nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import JobDep, ServicesDep, TenantDep
from api.services.watch import follow
from store import webhooks

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}/events", summary="A job's events as a Server-Sent Events stream (replays from Last-Event-ID)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "events: status, progress, preview, completed"}})
async def job_events(svc: ServicesDep, job: JobDep, request: Request,
                     last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=2**62)] = None,
                     after: Annotated[int | None, Query(ge=0, le=2**62, description="replay events after this id (as Last-Event-ID)")] = None,
                     ) -> StreamingResponse:
    start = max(last_event_id or 0, after or 0)
    return StreamingResponse(_stream(svc, job.id, start, request), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(svc: ServicesDep, job_id: str, last: int, request: Request) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    async for event in follow(svc, job_id, last, request.is_disconnected):
        if event is None:
            yield ": keep-alive\n\n"
            continue
        event_id, kind, data = event
        yield f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get("/webhooks/secret", tags=["webhooks"], summary="Your webhook signing secret",
            description="Each webhook delivery carries `X-Minegan-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body "
                        "with this secret; compare it in constant time before trusting a delivery. `X-Minegan-Event-Id` "
                        "(and `id` in the body) is the idempotency id: a retried delivery repeats it.")
def webhook_secret(svc: ServicesDep, tenant: TenantDep) -> dict[str, str]:
    return {"secret": webhooks.tenant_secret(svc.settings.database_url, tenant), "header": "X-Minegan-Signature",
            "algorithm": "HMAC-SHA256 of the request body, hex, prefixed sha256="}
