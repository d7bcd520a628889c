"""Celery tasks: take a job id, run it through ``worker.runner``; transient errors retry with backoff."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import OperationalError

from store.blobs import make_blob_store
from store.settings import get_settings
from worker.celery_app import app
from worker.runner import execute_job

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, BotoCoreError, ClientError, ConnectionError, TimeoutError)


@app.task(name="minegan.run_job", bind=True, max_retries=5)
def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    try:
        return execute_job(job_id, settings, make_blob_store(settings))
    except TRANSIENT as exc:
        log.warning("job %s: transient error %s; retrying", job_id, exc)
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc
