"""The embedded worker: runs queued jobs one at a time, each in a child process, with no broker.

Why a child process and not a thread of the API process: every OS thread that runs torch ops owns an
OpenMP team, and once a process holds more OpenMP threads than there are CPUs, libgomp stops spinning
between parallel regions (api/compute.py). The API's event-loop thread already holds a team (it renders
samples), so a job trained on a second thread of the same process ran markedly slower than the same job
in ``minegan train`` (docs/benchmarks.md, "Design figures"), and sampling slowed down while it trained.
A child process has its own OpenMP runtime. It also keeps a crash in training (a segfault, the kernel's OOM killer) from taking the API down:
the job is marked failed and the server keeps serving.

The child is started with ``spawn`` (a fork of a process that has used OpenMP can hang in the child),
which costs a second or two of imports per job. It talks to the parent only through the database (progress,
status) and three things passed at start: the settings, the zoo directory and a shutdown event.

Shutdown (``stop``) sets that event: the running job stops at its next step and goes back to ``queued``,
to resume from its last checkpoint at the next start. The child ignores SIGINT (Ctrl-C reaches the whole
process group; the parent decides), treats SIGTERM like the event, and stops the same way if the parent
process dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from core import zoo
from store import events, logs
from store import jobs as jobs_dao
from store.blobs import make_blob_store
from store.settings import Settings

log = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("spawn")


def _child(job_id: str, settings: Settings, zoo_dir: str, interrupt: Any) -> None:
    """The job's process: run it to an end state (or until ``interrupt``) and exit."""
    # with several API processes their metrics are files in this directory (api/metrics.py); the job's are not API metrics
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: interrupt.set())
    logs.setup(settings.log_format)

    parent = multiprocessing.parent_process()
    if parent is not None:  # the server died without stopping us: stop at the next step, resume later

        def watch() -> None:
            wait([parent.sentinel])
            interrupt.set()

        threading.Thread(target=watch, name="minegan-parent-watch", daemon=True).start()

    # imported only now: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when the job's metrics module is first imported
    from worker.runner import execute_job

    zoo.WEIGHTS_DIR = Path(zoo_dir)  # the server's zoo directory, whatever it was set to
    try:
        execute_job(job_id, settings, make_blob_store(settings), interrupt)  # it logs how the job ended
    except Exception:  # noqa: BLE001 - the job is marked failed; the server keeps serving
        log.exception("job %s crashed", job_id)
        jobs_dao.record_failure(settings.database_url, job_id, "internal_error", "the job crashed; see server logs")


class EmbeddedWorker:
    def __init__(self, settings: Settings, poll_s: float = 0.0) -> None:
        self.settings = settings  # the child opens the blob store and the database from these
        self.jobs: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="minegan-worker", daemon=True)
        self.interrupt = _CTX.Event()
        # poll_s > 0: also take the jobs that the API processes queued in the database (minegan worker polls; cli/serve.py)
        self.poll_s = poll_s
        self._known: set[str] = set()  # put on the queue and not yet run to its end here
        self._lock = threading.Lock()
        self._poller = threading.Thread(target=self._poll, name="minegan-worker-poll", daemon=True)

    def start(self, pending: list[str] | None = None) -> None:
        for job_id in pending or []:  # jobs left queued/running by a previous process resume
            self.enqueue(job_id)
        self.thread.start()
        if self.poll_s > 0:
            self._poller.start()

    def idle(self) -> bool:
        """No job queued or running here, and the last one's end handled (its tenant's caches told)."""
        with self._lock:
            return not self._known

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            self._known.add(job_id)
        self.jobs.put(job_id)

    def _poll(self) -> None:
        while not self.interrupt.wait(self.poll_s):
            try:
                queued = jobs_dao.queued(self.settings.database_url)
            except Exception:  # noqa: BLE001 - the database may be busy for a moment: the next round sees the jobs
                log.warning("embedded worker: could not look for queued jobs", exc_info=True)
                continue
            with self._lock:
                new = [j for j in queued if j not in self._known]
            for job_id in new:
                self.enqueue(job_id)

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
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001 - e.g. the child could not be started; keep the worker alive
                log.exception("job %s could not be run", job_id)
                self._fail(job_id, "internal_error", "the job could not be started; see server logs")
            finally:
                with self._lock:  # a job queued again later is taken again (a duplicate is dropped by its claim)
                    self._known.discard(job_id)

    def _run(self, job_id: str) -> None:
        p = _CTX.Process(target=_child, args=(job_id, self.settings, str(zoo.WEIGHTS_DIR), self.interrupt),
                         name=f"minegan-job-{job_id[:8]}", daemon=True)
        p.start()
        p.join()
        job = jobs_dao.get(self.settings.database_url, job_id)
        if job is None:
            return
        if job.status == "succeeded":
            events.notify_local(job.tenant)  # this process's latest-job cache (the child has no listeners)
        elif job.status == "running" and p.exitcode != 0 and not self.interrupt.is_set():  # killed mid-job (OOM killer)
            how = f"signal {-p.exitcode}" if p.exitcode is not None and p.exitcode < 0 else f"exit code {p.exitcode}"
            log.error("job %s: its process died (%s); trying again from its last checkpoint", job_id, how)
            # as a Celery worker would: the next claim sees the dead holder and counts an attempt, and after
            # max_attempts it fails the job with worker_lost (store/jobs.claim)
            self.jobs.put(job_id)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        jobs_dao.record_failure(self.settings.database_url, job_id, code, message)
