"""The embedded worker: a background thread that runs queued jobs in-process (no broker needed)."""

from __future__ import annotations

import logging
import queue
import threading

from store.blobs import BlobStore
from store.settings import Settings
from worker.runner import execute_job

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self, settings: Settings, blobs: BlobStore) -> None:
        self.settings, self.blobs = settings, blobs
        self.jobs: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="minegan-worker", daemon=True)
        self.interrupt = threading.Event()

    def start(self, pending: list[str] | None = None) -> None:
        for job_id in pending or []:  # jobs left queued/running by a previous process resume
            self.jobs.put(job_id)
        self.thread.start()

    def enqueue(self, job_id: str) -> None:
        self.jobs.put(job_id)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; a running job stops at its next step and is left queued, to resume from its
        last checkpoint when the server starts again. Waits up to ``timeout`` seconds for that."""
        self.interrupt.set()
        self.jobs.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("the running job did not stop within %.0f s", timeout)

    def _loop(self) -> None:
        while True:
            job_id = self.jobs.get()
            if job_id is None or self.interrupt.is_set():
                return
            # each job runs on a thread of its own that ends with it: a thread that has run torch ops keeps an
            # OpenMP team alive, and a second live team makes the API's sampling thread slower on every request
            # (api/compute.py)
            runner = threading.Thread(target=self._run, args=(job_id,), name=f"minegan-job-{job_id[:8]}", daemon=True)
            runner.start()
            runner.join()

    def _run(self, job_id: str) -> None:
        try:
            status = execute_job(job_id, self.settings, self.blobs, self.interrupt)
            log.info("job %s %s", job_id, status)
        except Exception:  # noqa: BLE001 - keep the worker alive; the job is marked failed
            log.exception("job %s crashed", job_id)
            from store import jobs as jobs_dao

            jobs_dao.finish(self.settings.database_url, job_id, "failed", error=("internal_error", "the job crashed; see server logs"))
