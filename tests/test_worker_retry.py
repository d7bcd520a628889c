"""A storage outage mid-job is retried, and the retries do not count as dead workers.

The job table's ``attempts`` counts workers that died running a job (``max_attempts``, then ``worker_lost``). A task
that stops on a transient error (the S3 server restarting) and is retried by Celery is not a dead worker: before
this was fixed, the third retry of an outage failed the job as ``worker_lost`` (seen in CI: the S3 restart test).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import EndpointConnectionError

from store import jobs as jobs_dao
from store.blobs import LocalBlobStore
from store.db import upgrade
from store.settings import Settings
from worker import runner, tasks


class _Outage(LocalBlobStore):
    """A local store whose reads fail like an unreachable S3 endpoint for the first ``fail_reads`` calls."""

    def __init__(self, root: Path, fail_reads: int) -> None:
        super().__init__(root)
        self.fail_reads = fail_reads
        self.reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        if self.reads <= self.fail_reads:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return super().get(key)


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, str]:
    url = f"sqlite:///{tmp_path}/jobs.db"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=str(tmp_path / "blobs"), work_dir=str(tmp_path / "work"),
                        max_attempts=3)
    job_id = str(uuid.uuid4())
    jobs_dao.create(url, job_id=job_id, tenant="t", spec={"method": "minegan", "sources": ["no-such-model"]},
                    upload_key="uploads/x.zip", total_steps=10)
    return settings, job_id


def test_a_transient_error_hands_the_job_back_without_using_an_attempt(env: tuple[Settings, str], tmp_path: Path) -> None:
    settings, job_id = env
    blobs = _Outage(tmp_path / "blobs", fail_reads=10)
    with mock.patch.object(runner.registry, "load", side_effect=lambda b, name, d, t: b.get("sources/" + name)):
        for _ in range(settings.max_attempts + 2):  # more retries than max_attempts: still not "worker_lost"
            with pytest.raises(EndpointConnectionError):
                runner.execute_job(job_id, settings, blobs)
            job = jobs_dao.get(settings.database_url, job_id)
            assert job is not None
            assert job.status == "queued" and job.attempts == 0, (job.status, job.attempts)
    assert blobs.reads == settings.max_attempts + 2


def test_the_task_retries_an_outage_then_fails_it_as_service_unavailable(env: tuple[Settings, str], tmp_path: Path) -> None:
    settings, job_id = env
    blobs = _Outage(tmp_path / "blobs", fail_reads=1000)
    calls: list[Any] = []

    def load(b: Any, name: str, d: Any, t: Any) -> Any:
        calls.append(name)
        return b.get("sources/" + name)

    with mock.patch.object(tasks, "get_settings", return_value=settings), \
            mock.patch.object(tasks, "make_blob_store", return_value=blobs), \
            mock.patch.object(runner.registry, "load", side_effect=load):
        result = tasks.run_job.apply(args=(job_id,))
    assert len(calls) == tasks.run_job.max_retries + 1  # every retry ran the job again
    assert result.failed()
    job = jobs_dao.get(settings.database_url, job_id)
    assert job is not None
    assert job.status == "failed" and job.error_code == "service_unavailable", (job.status, job.error_code)
    assert "submit the job again later" in (job.error_message or "")
