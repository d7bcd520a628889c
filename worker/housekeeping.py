"""``minegan worker``: the process that runs jobs, finds lost ones and delivers webhooks.

* **Jobs.** Embedded mode (no broker): the embedded worker (worker/embedded.py) takes queued jobs from the database,
  each in a child process of its own; service mode: a Celery worker, started as this process's child with the
  settings of the brief (prefork, one pool process, prefetch 1, ``acks_late`` in worker/celery_app.py).
* **The stale-job sweeper** (:func:`sweep_once`). A job whose worker died without a trace (the whole worker
  SIGKILLed, a host lost, Redis restarted and forgot the message) would otherwise stay ``running`` or ``queued``
  forever. ``store.jobs.sweep`` finds them by their heartbeat; the sweeper enqueues them again (they resume from
  their last checkpoint) or reports the ones failed after ``max_attempts``.
* **Webhook delivery** (store/webhooks.py), due deliveries every half second.

Several copies may run at once (one per GPU host): the sweeper and the deliveries lock their rows with
``SKIP LOCKED``, and a duplicate delivery of a job is dropped by its claim.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx

from store import jobs as jobs_dao
from store import webhooks
from store.db import upgrade
from store.settings import Settings
from worker.embedded import EmbeddedWorker

log = logging.getLogger(__name__)
DELIVER_EVERY_S = 0.5


def sweep_once(settings: Settings, enqueue: Callable[[str], None], requeue_queued: bool = True) -> tuple[list[str], list[str]]:
    """One round of the sweeper: returns (job ids enqueued again, job ids failed)."""
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
            await asyncio.to_thread(sweep_once, settings, enqueue, requeue_queued)
        except Exception:  # noqa: BLE001 - the database or broker may be down for a moment; try next round
            log.warning("stale-job sweep failed", exc_info=True)


async def deliver_forever(settings: Settings) -> None:
    """Due webhook deliveries every :data:`DELIVER_EVERY_S` (store/webhooks.py)."""
    with httpx.Client(timeout=5.0) as client:
        while True:
            try:
                await asyncio.to_thread(webhooks.deliver_due, settings.database_url, settings.webhook_allow_list(),
                                        settings.webhook_retry_s, client)
            except Exception:  # noqa: BLE001 - a database hiccup must not stop deliveries for good
                log.warning("webhook deliveries: a round failed; trying again", exc_info=True)
            await asyncio.sleep(DELIVER_EVERY_S)


def housekeeping(settings: Settings, enqueue: Callable[[str], None]) -> list[asyncio.Task[None]]:
    """The sweeper and webhook delivery as tasks of the running event loop (cancel them to stop)."""
    # in embedded mode the queue is the database itself: only stale running jobs need the sweeper
    return [asyncio.create_task(sweep_forever(settings, enqueue, requeue_queued=not settings.embedded)),
            asyncio.create_task(deliver_forever(settings))]


def celery_command(settings: Settings, name: str | None = None) -> list[str]:
    """The Celery worker of service mode: prefork with one pool process (one device), prefetch 1."""
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", settings.queue, "-c", "1", "-P", "prefork",
           "--prefetch-multiplier", "1", "--loglevel", "INFO"]
    return cmd + (["-n", name] if name else [])


def run(settings: Settings, name: str | None = None, parent: int | None = None) -> int:
    """``minegan worker`` until SIGTERM or SIGINT (or, in service mode, until its Celery worker exits; with
    ``parent``, once the process of that id is no longer its parent): a running embedded job stops at its next step
    and stays queued, to resume from its checkpoint at the next start."""
    upgrade(settings.database_url)
    stop = threading.Event()
    celery: subprocess.Popen[bytes] | None = None
    embedded = None
    if settings.embedded:
        embedded = EmbeddedWorker(settings, poll_s=settings.embedded_poll_s)  # jobs queued by the API, from the database
        embedded.start(jobs_dao.unfinished(settings.database_url))  # jobs left queued or running resume
        enqueue = embedded.enqueue
    else:
        from worker.celery_app import app as celery_app

        celery = subprocess.Popen(celery_command(settings, name))

        def enqueue(job_id: str) -> None:
            celery_app.send_task("minegan.run_job", args=[job_id], queue=settings.queue)

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if celery is not None and celery.poll() is None:
            celery.send_signal(signum)  # Celery's warm shutdown: the running task ends, or is redelivered (acks_late)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    async def main() -> None:
        tasks = housekeeping(settings, enqueue)
        while not stop.is_set() and (celery is None or celery.poll() is None):
            if parent is not None and os.getppid() != parent:  # `minegan serve` is gone, however it ended
                log.warning("minegan worker: the server that started it is gone; stopping")
                break
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()

    log.warning("minegan worker: %s; the stale-job sweeper and webhook delivery",
                "embedded jobs (each in a child process)" if embedded else f"Celery worker on queue {settings.queue!r}")
    asyncio.run(main())
    if embedded is not None:
        embedded.stop()
    if celery is not None:
        return celery.wait()
    return 0
