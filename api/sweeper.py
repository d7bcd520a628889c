"""The stale-job sweeper: runs inside the API process every ``sweep_interval_s``.

A job whose worker died without a trace (the whole worker SIGKILLed, a host lost, Redis restarted and
forgot the message) would otherwise stay ``running`` or ``queued`` forever. ``store.jobs.sweep`` finds
them by their heartbeat; this loop enqueues them again (they resume from their last checkpoint) or
reports the ones failed after ``max_attempts``. Several API replicas may sweep at once: rows are locked
with SKIP LOCKED and a duplicate delivery is dropped by ``claim``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from store import jobs as jobs_dao
from store.settings import Settings

log = logging.getLogger(__name__)


def sweep_once(settings: Settings, enqueue: Callable[[str], None], requeue_queued: bool = True) -> tuple[list[str], list[str]]:
    after = settings.requeue_queued_after_s if requeue_queued else float("inf")
    requeue, failed = jobs_dao.sweep(settings.database_url, settings.stale_after_s, settings.max_attempts, after)
    for job_id in requeue:
        log.warning("job %s: no worker is running it; enqueued again", job_id)
        enqueue(job_id)
    for job_id in failed:
        log.error("job %s: failed after %d attempts (worker lost)", job_id, settings.max_attempts)
    return requeue, failed


async def sweep_forever(settings: Settings, enqueue: Callable[[str], None], requeue_queued: bool) -> None:
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            await run_in_threadpool(sweep_once, settings, enqueue, requeue_queued)
        except Exception:  # noqa: BLE001 - the database or broker may be down for a moment; try next round
            log.warning("stale-job sweep failed", exc_info=True)
