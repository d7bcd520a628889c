"""The job table's crash-safety rules on SQLite: who may claim a running job, and what the sweeper does."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from store import jobs as jobs_dao
from store.db import session_scope, upgrade
from store.models import Job, utcnow


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path}/jobs.db"
    upgrade(u)
    return u


def _job(url: str, **values) -> str:  # type: ignore[no-untyped-def]
    job_id = str(uuid.uuid4())
    jobs_dao.create(url, job_id=job_id, tenant="t", spec={"method": "minegan"}, upload_key="u", total_steps=10)
    if values:
        with session_scope(url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))
    return job_id


def test_claim_respects_a_live_holder_and_takes_over_from_a_dead_one(url: str) -> None:
    host = socket.gethostname()
    live = _job(url, status="running", worker=f"{host}:1", heartbeat_at=utcnow(), attempts=1)  # pid 1 exists
    with pytest.raises(jobs_dao.JobBusy):
        jobs_dao.claim(url, live, f"{host}:2")
    dead = _job(url, status="running", worker=f"{host}:999999", heartbeat_at=utcnow(), attempts=1)
    job = jobs_dao.claim(url, dead, f"{host}:2")
    assert job is not None and job.attempts == 2 and job.worker == f"{host}:2"
    remote_stale = _job(url, status="running", worker="elsewhere:5", heartbeat_at=utcnow() - timedelta(seconds=60), attempts=1)
    assert jobs_dao.claim(url, remote_stale, f"{host}:2", stale_after_s=30) is not None
    remote_fresh = _job(url, status="running", worker="elsewhere:5", heartbeat_at=utcnow(), attempts=1)
    with pytest.raises(jobs_dao.JobBusy):
        jobs_dao.claim(url, remote_fresh, f"{host}:2", stale_after_s=30)


def test_a_job_that_keeps_killing_workers_is_failed(url: str) -> None:
    job_id = _job(url, status="running", worker=f"{socket.gethostname()}:999999", attempts=3)
    assert jobs_dao.claim(url, job_id, "w:1", max_attempts=3) is None
    job = jobs_dao.get(url, job_id)
    assert job is not None and job.status == "failed" and job.error_code == "worker_lost"


def test_sweep_requeues_stale_jobs_and_fails_exhausted_ones(url: str) -> None:
    old = utcnow() - timedelta(seconds=600)
    stale = _job(url, status="running", heartbeat_at=old, attempts=1)
    fresh = _job(url, status="running", heartbeat_at=utcnow(), attempts=1)
    exhausted = _job(url, status="running", heartbeat_at=old, attempts=3)
    lost_msg = _job(url, status="queued", heartbeat_at=old)
    waiting = _job(url, status="queued", heartbeat_at=utcnow())
    requeue, failed = jobs_dao.sweep(url, stale_after_s=60, max_attempts=3, requeue_queued_after_s=300)
    assert set(requeue) == {stale, lost_msg} and failed == [exhausted]
    assert jobs_dao.get_status(url, stale) == "queued" and jobs_dao.get_status(url, fresh) == "running"
    assert jobs_dao.get_status(url, waiting) == "queued"
    assert jobs_dao.get(url, exhausted).error_code == "worker_lost"  # type: ignore[union-attr]
    again, _ = jobs_dao.sweep(url, stale_after_s=60, max_attempts=3, requeue_queued_after_s=300)
    assert again == []  # just re-enqueued: not again until requeue_queued_after_s passes
