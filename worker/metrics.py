"""A Celery worker's own Prometheus metrics, on its own port (``MINEGAN_WORKER_METRICS_PORT``; 0: off).

The API's ``/metrics`` already reports every job from the database (api/metrics.py). What only the worker process
knows is reported here: the jobs this worker ran and how they ended, their run time on this worker, the training
steps it computed and how long they took, whether it is busy now and when it last made progress. With prefork
``-c 1`` the one pool process runs the jobs, so it serves these (started at ``worker_process_init``); a replaced
pool process binds the port again. Scraped as the ``minegan-worker`` job of docker/prometheus.yml.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

JOBS = Counter("minegan_worker_jobs_total", "Jobs this worker ran, by method and how the run ended", ["method", "status"])
JOB_SECONDS = Histogram("minegan_worker_job_run_seconds", "Run time of a job on this worker (claim to end)", ["method"],
                        buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600))
STEPS = Counter("minegan_worker_steps_total", "Training steps computed by this worker, by phase", ["phase"])
STEP_SECONDS = Histogram("minegan_worker_step_seconds", "Wall time between two reported training steps",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BUSY = Gauge("minegan_worker_busy", "1 while this worker runs a job")
PROGRESS = Gauge("minegan_worker_last_progress_timestamp_seconds", "Unix time of this worker's last training step")


class StepMeter:
    """Counts the steps of one job from its progress callbacks (``step`` counts from the start of the run)."""

    def __init__(self) -> None:
        self.phase, self.step, self.at = "", 0, 0.0

    def __call__(self, phase: str, step: int) -> None:
        now = time.time()
        if phase == self.phase and step > self.step:
            STEPS.labels(phase).inc(step - self.step)
            STEP_SECONDS.observe((now - self.at) / (step - self.step))
        elif step > 0:
            STEPS.labels(phase).inc(1)
        self.phase, self.step, self.at = phase, step, now
        PROGRESS.set(now)


def serve(port: int, host: str) -> bool:
    """Serve this process's metrics on ``host:port`` (True), or log why not (False: the worker runs on)."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as e:
        log.error("worker metrics: cannot listen on %s:%d (%s)", host, port, e)
        return False
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return True
