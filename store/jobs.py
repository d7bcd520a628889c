"""The one data-access module for jobs: every read and write of the ``jobs`` table goes through here."""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from store import logs
from store.db import engine_for, session_scope
from store.models import Job, JobEvent, Tenant, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

FINAL = ("succeeded", "failed", "canceled")


def _event(s: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    """Record an event in the session of the change it reports: it is committed with it, or not at all; so is its
    webhook delivery, when the job asked for this kind of event."""
    event = JobEvent(job_id=job_id, kind=kind, data=data, created_at=utcnow())
    s.add(event)
    job = s.get(Job, job_id)
    hook = (job.spec or {}).get("webhook") if job is not None else None
    if hook and kind in (job.spec.get("webhook_events") or ["completed"]):  # type: ignore[union-attr]
        s.flush()  # the event's id: the delivery's idempotency id
        s.add(WebhookDelivery(event_id=event.id, job_id=job_id, tenant=job.tenant, url=hook, status="pending",  # type: ignore[union-attr]
                              attempts=0, next_attempt_at=utcnow(), created_at=utcnow()))


def _status(s: Session, job: Job) -> None:
    """A ``status`` event for the job's new status; for a final one, ``completed`` too (the stream's last event)."""
    _event(s, job.id, "status", {"status": job.status})
    if job.status in FINAL:
        done: dict[str, Any] = {"status": job.status}
        if job.error_code:
            done["error"] = {"code": job.error_code, "message": job.error_message}
        if job.metrics:
            done["metrics"] = job.metrics
        _event(s, job.id, "completed", done)


def submitted_by(url: str, job_id: str) -> str | None:
    """The id of the request that submitted the job (its first event records it), for the worker's logs."""
    with session_scope(url) as s:
        data = s.scalar(select(JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.id).limit(1))
        return (data or {}).get("request_id")


def add_event(url: str, job_id: str, kind: str, data: dict[str, Any]) -> None:
    with session_scope(url) as s:
        _event(s, job_id, kind, data)


def events_after(url: str, job_id: str, after: int, limit: int = 500) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, kind, data) of the job's events with an id above ``after``, oldest first."""
    with session_scope(url) as s:
        rows = s.execute(select(JobEvent.id, JobEvent.kind, JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.id > after)
                         .order_by(JobEvent.id).limit(limit))
        return [(int(r[0]), str(r[1]), dict(r[2])) for r in rows]


class QuotaExceeded(Exception):
    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"{active} active jobs, limit {limit}")
        self.active, self.limit = active, limit


def create(url: str, *, job_id: str, tenant: str, spec: dict[str, Any], upload_key: str, total_steps: int,
           default_limit: int | None = None, run: dict[str, Any] | None = None) -> Job:
    """Insert a queued job. With ``default_limit``, only while the tenant has fewer queued + running jobs than its limit
    (the tenant's own, else ``default_limit``): the count and the insert are one transaction that holds the tenant's
    lock (PostgreSQL: its ``tenants`` row, FOR UPDATE; SQLite: the database's write lock, BEGIN IMMEDIATE), so
    concurrent submissions cannot all pass the check. Raises :class:`QuotaExceeded`."""
    job = Job(id=job_id, tenant=tenant, status="queued", method=spec["method"], spec=spec, run=run, upload_key=upload_key,
              step=0, total_steps=total_steps, cancel_requested=False, attempts=0, created_at=utcnow())
    with session_scope(url) as s:
        if default_limit is not None:
            _lock_tenant(s, url, tenant)
            t = s.get(Tenant, tenant)
            limit = t.max_concurrent_jobs if t is not None and t.max_concurrent_jobs is not None else default_limit
            active = int(s.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.in_(("queued", "running"))))
                         or 0)
            if active >= limit:
                raise QuotaExceeded(active, limit)
        s.add(job)
        s.flush()
        rid = logs.request_id.get()
        _event(s, job_id, "status", {"status": "queued", **({"request_id": rid} if rid else {})})
    return job


def _lock_tenant(s: Session, url: str, tenant: str) -> None:
    """Serialise the quota check of one tenant across processes (see :func:`create`)."""
    if engine_for(url).dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, before the count
        return
    s.execute(insert(Tenant).values(id=tenant, created_at=utcnow()).on_conflict_do_nothing(index_elements=["id"]))
    s.execute(select(Tenant.id).where(Tenant.id == tenant).with_for_update())


def get(url: str, job_id: str, tenant: str | None = None) -> Job | None:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            return None
        return job


def get_status(url: str, job_id: str) -> str | None:
    job = get(url, job_id)
    return job.status if job else None


def list_jobs(url: str, tenant: str, limit: int, offset: int, status: str | None = None) -> tuple[list[Job], int]:
    with session_scope(url) as s:
        q = select(Job).where(Job.tenant == tenant)
        if status:
            q = q.where(Job.status == status)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = list(s.scalars(q.order_by(Job.created_at.desc()).limit(limit).offset(offset)))
        return rows, int(total)


def unfinished(url: str) -> list[str]:
    """Ids of all queued or running jobs, oldest first (the embedded worker picks them up at start)."""
    with session_scope(url) as s:
        q = select(Job.id).where(Job.status.in_(("queued", "running"))).order_by(Job.created_at)
        return list(s.scalars(q))


def queued(url: str) -> list[str]:
    """Ids of the queued jobs, oldest first."""
    with session_scope(url) as s:
        return list(s.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.created_at)))


def latest_model(url: str, tenant: str) -> tuple[str, str] | None:
    """(job id, model key) of the tenant's most recently finished successful job: two columns, no ORM objects."""
    q = (select(Job.id, Job.model_key).where(Job.tenant == tenant, Job.status == "succeeded")
         .order_by(Job.finished_at.desc()).limit(1))
    with engine_for(url).connect() as conn:
        row = conn.execute(q).first()
    return (row[0], row[1]) if row is not None and row[1] else None


def latest_succeeded(url: str, tenant: str) -> Job | None:
    with session_scope(url) as s:
        q = select(Job).where(Job.tenant == tenant, Job.status == "succeeded").order_by(Job.finished_at.desc()).limit(1)
        return s.scalars(q).first()


class JobBusy(Exception):
    """Another live worker holds the job (a duplicate delivery): leave it alone."""


def _holder_alive(holder: str | None, heartbeat: datetime | None, stale_after_s: float) -> bool:
    """Whether the worker that last claimed a running job is still at it.

    Same host: its process must exist (a SIGKILLed pool child does not, so its redelivery proceeds at
    once). Another host: its heartbeat must be fresher than ``stale_after_s``."""
    if not holder or heartbeat is None:
        return False
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    hb = heartbeat if heartbeat.tzinfo else heartbeat.replace(tzinfo=UTC)
    return (utcnow() - hb).total_seconds() < stale_after_s


def claim(url: str, job_id: str, worker: str, stale_after_s: float = 300.0, max_attempts: int = 3) -> Job | None:
    """Mark a queued (or interrupted running) job as running; None if it already reached a final state.

    Raises JobBusy if another live worker is running it (a redelivery while the first attempt goes on)."""
    with session_scope(url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.status in FINAL:
            return None
        if job.cancel_requested:
            job.status, job.finished_at = "canceled", utcnow()
            _status(s, job)
            return None
        if job.status == "running" and job.worker != worker and _holder_alive(job.worker, job.heartbeat_at, stale_after_s):
            raise JobBusy(f"job {job_id} is running on {job.worker}")
        if job.attempts >= max_attempts:  # it keeps killing its worker (out of memory, a crash): stop trying
            job.status, job.finished_at = "failed", utcnow()
            job.error_code = "worker_lost"
            job.error_message = (f"the job's worker died {job.attempts} times while running it (out of memory?); "
                                 "try a smaller batch_size, or tell the operator")
            _status(s, job)
            return None
        if job.status != "running":
            _event(s, job.id, "status", {"status": "running"})
        job.status = "running"
        job.attempts += 1
        job.worker = worker
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        return job


def release(url: str, job_id: str) -> None:
    """Put a running job back to ``queued`` after its worker stopped it on purpose (a shutdown). The attempt is
    not counted: only workers that die count against ``max_attempts``."""
    with session_scope(url) as s:
        done = s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                         .values(status="queued", worker=None, attempts=Job.attempts - 1, heartbeat_at=utcnow()))
        if done.rowcount:  # type: ignore[attr-defined]
            _event(s, job_id, "status", {"status": "queued"})


def heartbeat(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=utcnow()))


def sweep(url: str, stale_after_s: float, max_attempts: int, requeue_queued_after_s: float) -> tuple[list[str], list[str]]:
    """Find jobs nobody is working on. Returns (ids to enqueue again, ids just failed).

    * running with a heartbeat older than ``stale_after_s`` (its worker died or hangs): back to queued, or
      failed with ``worker_lost`` after ``max_attempts`` attempts;
    * queued and not (re)enqueued for ``requeue_queued_after_s`` (the broker may have lost the message, e.g.
      Redis restarted without persistence): enqueued again. A duplicate delivery is harmless (``claim``).
    ``heartbeat_at`` of a queued job records when it was last enqueued."""
    now = utcnow()
    requeue, failed = [], []
    with session_scope(url) as s:
        running = s.scalars(select(Job).where(Job.status == "running").with_for_update(skip_locked=True))
        for job in running:
            hb = job.heartbeat_at if job.heartbeat_at is None or job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=UTC)
            if hb is not None and (now - hb).total_seconds() < stale_after_s:
                continue
            if job.attempts >= max_attempts:
                job.status, job.finished_at = "failed", now
                job.error_code = "worker_lost"
                job.error_message = (f"the worker running this job stopped responding ({job.attempts} attempts); "
                                     "submit it again, and tell the operator if it keeps happening")
                _status(s, job)
                failed.append(job.id)
            else:
                job.status, job.heartbeat_at = "queued", now
                _status(s, job)
                requeue.append(job.id)
        queued = s.scalars(select(Job).where(Job.status == "queued").with_for_update(skip_locked=True))
        for job in queued:
            if job.id in requeue:
                continue
            last = job.heartbeat_at or job.created_at
            last = last if last.tzinfo else last.replace(tzinfo=UTC)
            if (now - last).total_seconds() >= requeue_queued_after_s:
                job.heartbeat_at = now
                requeue.append(job.id)
    return requeue, failed


def report_progress(url: str, job_id: str, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status in FINAL:
            return
        job.phase, job.step, job.total_steps, job.heartbeat_at = phase, step, total, utcnow()
        job.stats = {**(job.stats or {}), **stats}
        _event(s, job_id, "progress", {"phase": phase, "step": step, "total_steps": total, "stats": stats})


def set_target_report(url: str, job_id: str, report: dict[str, Any]) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(target_report=report))


def cancel_requested(url: str, job_id: str) -> bool:
    with session_scope(url) as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def request_cancel(url: str, job_id: str, tenant: str) -> Job | None:
    """Ask a job to stop. A queued job is canceled at once; a running one stops at its next step."""
    with session_scope(url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.tenant != tenant:
            return None
        if job.status not in FINAL:
            job.cancel_requested = True
            if job.status == "queued":
                job.status, job.finished_at = "canceled", utcnow()
                _status(s, job)
        return job


def finish(url: str, job_id: str, status: str, *, model_key: str | None = None, metrics: dict[str, Any] | None = None,
           error: tuple[str, str] | None = None, train_seconds: float | None = None) -> None:
    with session_scope(url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        was_final = job.status in FINAL
        job.status, job.finished_at = status, utcnow()
        if status == "succeeded":
            job.step = job.total_steps
            job.phase = "done"
        if model_key:
            job.model_key = model_key
        if metrics is not None:
            job.metrics = metrics
        if train_seconds is not None:
            job.train_seconds = train_seconds
        if error:
            job.error_code, job.error_message = error
        if not was_final:  # a job completes once: a late second finish (after the sweeper gave up on it) adds no event
            _status(s, job)


def record_failure(url: str, job_id: str, code: str, message: str) -> None:
    """Mark a job failed with its error (code, message): the one place a worker records a crash (the embedded worker,
    its job process, the Celery task). If the database is down too, it is logged and the sweeper fails the job later."""
    try:
        finish(url, job_id, "failed", error=(code, message))
    except Exception:  # noqa: BLE001 - logged; the sweeper fails it later
        log.exception("job %s: could not record the failure", job_id)
