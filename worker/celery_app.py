"""The Celery application: prefork, one process per device, late acks, a dedicated ``gpu`` queue.

Start a worker with:  celery -A worker.celery_app worker -Q gpu -c 1 --prefetch-multiplier 1
"""

from __future__ import annotations

from celery import Celery, signals

from store import logs
from store.settings import get_settings


def make_celery() -> Celery:
    s = get_settings()
    app = Celery("minegan", broker=s.broker_url or "redis://127.0.0.1:6379/0", backend=s.result_backend,
                 include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged only when it finishes ...
        task_reject_on_worker_lost=True,  # ... and redelivered if its process dies
        worker_prefetch_multiplier=1,
        task_default_queue=s.queue,
        task_routes={"minegan.run_job": {"queue": s.queue}},
        broker_transport_options={"visibility_timeout": s.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_track_started=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery()


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    """The worker's logs as the API's: JSON lines with the job id, tenant and submitting request id (store/logs.py)."""
    logs.setup(get_settings().log_format)


@signals.worker_process_init.connect
def _metrics(**_: object) -> None:
    """The pool process that runs the jobs serves the worker's metrics (worker/metrics.py), when a port is set."""
    from worker import metrics

    s = get_settings()
    metrics.serve(s.worker_metrics_port, s.worker_metrics_host)
