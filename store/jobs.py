"""The one data-access module for jobs: every read and write of the ``jobs`` table goes through here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from store.db import engine_for, session_scope
from store.models import Job, utcnow

FINAL = ("succeeded", "failed", "canceled")


def create(url: str, *, job_id: str, tenant: str, spec: dict[str, Any], upload_key: str, total_steps: int) -> Job:
    job = Job(id=job_id, tenant=tenant, status="queued", method=spec["method"], spec=spec, upload_key=upload_key,
              step=0, total_steps=total_steps, cancel_requested=False, attempts=0, created_at=utcnow())
    with session_scope(url) as s:
        s.add(job)
    return job


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


def claim(url: str, job_id: str, worker: str) -> Job | None:
    """Mark a queued (or interrupted running) job as running; None if it already reached a final state."""
    with session_scope(url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.status in FINAL:
            return None
        if job.cancel_requested:
            job.status, job.finished_at = "canceled", utcnow()
            return None
        job.status = "running"
        job.attempts += 1
        job.worker = worker
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        return job


def report_progress(url: str, job_id: str, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status in FINAL:
            return
        job.phase, job.step, job.total_steps, job.heartbeat_at = phase, step, total, utcnow()
        job.stats = {**(job.stats or {}), **stats}


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
        return job


def finish(url: str, job_id: str, status: str, *, model_key: str | None = None, metrics: dict[str, Any] | None = None,
           error: tuple[str, str] | None = None, train_seconds: float | None = None) -> None:
    with session_scope(url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            return
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
