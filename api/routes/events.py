"""/jobs/{id}/events: a job's events as Server-Sent Events, replayable.

Every change of a job is recorded with it, in the same transaction (``store/jobs.py``): ``status`` (queued,
running, succeeded, failed, canceled), ``progress`` (phase, step, total_steps, losses), ``preview`` (a sample grid
stored during training, with a short-lived URL) and ``completed`` (the final status, the error or the metrics),
which ends the stream. Each event's SSE ``id`` is its sequence number: a client that reconnects with
``Last-Event-ID`` (browsers' EventSource do) gets exactly the events it has not seen, so it misses nothing and
sees nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import JobDep, ServicesDep, TenantDep
from api.services import Services
from store import jobs as jobs_dao
from store import webhooks
from store.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])
POLL_S = 0.5
KEEPALIVE_S = 15.0


@router.get("/jobs/{job_id}/events", summary="A job's events as a Server-Sent Events stream (replays from Last-Event-ID)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "events: status, progress, preview, completed"}})
async def job_events(svc: ServicesDep, job: JobDep, request: Request,
                     last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
                     after: Annotated[int | None, Query(ge=0, description="replay events after this id (as Last-Event-ID)")] = None,
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


async def follow(svc: Services, job_id: str, last: int, gone: Callable[[], Awaitable[bool]]
                 ) -> AsyncIterator[tuple[int, str, dict[str, Any]] | None]:
    """The job's events after id ``last`` as (id, kind, data), as they happen, until its ``completed`` event (or at once,
    for a job that completed before ``last``); None now and then while nothing happens (a keep-alive). Preview events
    get a short-lived URL of their image. Shared by the SSE stream and gRPC ``minegan.v1.Jobs/Watch``."""
    url = svc.settings.database_url
    quiet_since = time.monotonic()
    final = False
    while not await gone():
        events = await run_in_threadpool(jobs_dao.events_after, url, job_id, last)
        for event_id, kind, data in events:
            if kind == "preview" and "key" in data:
                data = {**data, "url": svc.blobs.url(data["key"], svc.settings.presign_expiry_s)}
            yield event_id, kind, data
            last = event_id
            if kind == "completed":
                return
        if events:
            quiet_since = time.monotonic()
            continue
        if final:  # read after the final status was seen, and still nothing: its completed event has id <= last
            return
        # The final status and its completed event are written in one transaction, but it can land between the read
        # above and this one: then the loop reads the events once more (and ends with completed) before it stops.
        final = await run_in_threadpool(jobs_dao.get_status, url, job_id) in jobs_dao.FINAL
        if final:
            continue
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield None
        await asyncio.sleep(POLL_S)


@router.get("/webhooks/secret", tags=["webhooks"], summary="Your webhook signing secret",
            description="Each webhook delivery carries `X-Minegan-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body "
                        "with this secret; compare it in constant time before trusting a delivery. `X-Minegan-Event-Id` "
                        "(and `id` in the body) is the idempotency id: a retried delivery repeats it.")
def webhook_secret(svc: ServicesDep, tenant: TenantDep) -> dict[str, str]:
    return {"secret": webhooks.tenant_secret(svc.settings.database_url, tenant), "header": "X-Minegan-Signature",
            "algorithm": "HMAC-SHA256 of the request body, hex, prefixed sha256="}


async def deliver_forever(settings: Settings) -> None:
    """The API process's webhook sender: due deliveries every half second (store/webhooks.py)."""
    with httpx.Client(timeout=5.0) as client:
        while True:
            try:
                await run_in_threadpool(webhooks.deliver_due, settings.database_url, settings.webhook_allow_list(),
                                        settings.webhook_retry_s, client)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop deliveries for good
                log.warning("webhook deliveries: a round failed; trying again", exc_info=True)
            await asyncio.sleep(POLL_S)
