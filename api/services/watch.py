"""Following a job's events as they happen (the SSE stream and gRPC ``Watch``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from api.services import Services
from store import jobs as jobs_dao

log = logging.getLogger(__name__)
POLL_S = 0.5
KEEPALIVE_S = 15.0


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
