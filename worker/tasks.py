"""Celery tasks: take a job id, run it through ``worker.runner``; transient errors retry with backoff."""

from __future__ import annotations

import logging

from store import jobs as jobs_dao
from store.blobs import make_blob_store
from store.settings import get_settings
from worker.celery_app import app
from worker.runner import TRANSIENT, execute_job

log = logging.getLogger(__name__)


@app.task(name="minegan.run_job", bind=True, max_retries=5)
def run_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    settings = get_settings()
    try:
        return execute_job(job_id, settings, make_blob_store(settings))
    except TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            _fail(job_id, "service_unavailable", f"storage or database kept failing ({type(exc).__name__}: {exc}); "
                                                 "submit the job again later")
            raise
        log.warning("job %s: transient error %s; retrying", job_id, exc)
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc
    except Exception:
        log.exception("job %s crashed", job_id)
        _fail(job_id, "internal_error", "the job crashed in the worker; see the worker log")
        raise


def _fail(job_id: str, code: str, message: str) -> None:
    jobs_dao.record_failure(get_settings().database_url, job_id, code, message)
