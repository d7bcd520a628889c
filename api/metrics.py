"""Prometheus metrics at ``/metrics`` (``prometheus-client``'s text format), and the request id of every request.

Two sources:

* this process's own: request latency by route template, sampling latency by protocol, model-cache hits and misses
  (module-level metrics of the default registry);
* the jobs, read from the database at scrape time (:class:`JobsCollector`): jobs by status and method, job run time
  and queue wait as histograms, and the age of each running job's last worker heartbeat. The database is where every
  worker process records its jobs, so these cover all workers, Celery or embedded, with no metrics endpoint of
  their own to scrape, and every API process reports the same numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store import logs
from store.db import session_scope
from store.models import Job, utcnow

REQUESTS = Histogram("minegan_http_request_duration_seconds", "HTTP request latency by route template", ["method", "route", "status"],
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SAMPLES = Histogram("minegan_sample_seconds", "Generating and encoding samples of a finished job", ["protocol"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
CACHE = Counter("minegan_model_cache_total", "Model cache lookups of the sampling path", ["result"])
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600)


def route_of(scope: Scope) -> str:
    """The route template of a request (``/jobs/{job_id}``), so label values stay few; the fast path's sample
    requests never reach the router, so they are named here."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    path = scope.get("path", "")
    if path == "/sample":
        return "/sample"
    if path.startswith("/jobs/") and path.endswith("/sample"):
        return "/jobs/{job_id}/sample"
    return "unmatched"


class RequestMiddleware:
    """The outermost layer of every HTTP request (so the sampling fast path goes through it too): gives the request its
    id (the caller's ``X-Request-Id`` if sane, else a new one; every log record of the request carries it,
    ``store/logs.py``; the response returns it) and times it by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        rid = logs.new_request_id(given)
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            with logs.bound(request_id=rid, tenant=None, job_id=None):
                await self.app(scope, receive, send_wrapper)
        finally:
            REQUESTS.labels(scope["method"], route_of(scope), str(status[0])).observe(time.perf_counter() - t0)


class JobsCollector(Collector):
    """Job metrics from the database, computed when Prometheus scrapes."""

    def __init__(self, database_url: str, recent: int = 10_000) -> None:
        self.url, self.recent = database_url, recent

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("minegan_jobs", "Jobs by status and method", labels=["status", "method"])
        run = HistogramMetricFamily("minegan_job_run_seconds", "Finished jobs: start to finish (the newest 10000)", labels=["status"])
        wait = HistogramMetricFamily("minegan_job_queue_wait_seconds", "Started jobs: submission to first start (the newest 10000)")
        beat = GaugeMetricFamily("minegan_worker_heartbeat_age_seconds", "Running jobs: seconds since their worker's last heartbeat",
                                 labels=["worker", "job_id"])
        now = utcnow()
        with session_scope(self.url) as s:
            for status, method, n in s.execute(select(Job.status, Job.method, func.count()).group_by(Job.status, Job.method)):
                jobs.add_metric([status, method], n)
            rows = s.execute(select(Job.status, Job.created_at, Job.started_at, Job.finished_at).where(Job.started_at.is_not(None))
                             .order_by(Job.created_at.desc()).limit(self.recent)).all()
            running = s.execute(select(Job.id, Job.worker, Job.heartbeat_at).where(Job.status == "running")).all()
        by_status: dict[str, list[float]] = {}
        waits = []
        for status, created, started, finished in rows:
            waits.append((_utc(started) - _utc(created)).total_seconds())
            if finished is not None:
                by_status.setdefault(status, []).append((_utc(finished) - _utc(started)).total_seconds())
        for status, values in by_status.items():
            run.add_metric([status], *_buckets(values))
        wait.add_metric([], *_buckets(waits))
        for job_id, worker, hb in running:
            if hb is not None:
                beat.add_metric([worker or "", job_id], (now - _utc(hb)).total_seconds())
        yield from (jobs, run, wait, beat)


def _utc(t: Any) -> Any:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _buckets(values: list[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and the sum, as HistogramMetricFamily wants them."""
    out = [(str(float(b)), float(sum(v <= b for v in values))) for b in JOB_BUCKETS] + [("+Inf", float(len(values)))]
    return out, float(sum(values))


def _all_processes() -> bytes:
    """The API metrics of every process of this server, summed (``prometheus_client``'s multiprocess mode: each process
    writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``, which ``minegan serve --workers`` sets)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def endpoint(jobs: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: this process's metrics, then the jobs' (read off the event loop)."""
    async def metrics(_: Request) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several API processes (minegan serve --workers): all of theirs, from files
            own = await run_in_threadpool(_all_processes)
        else:
            own = generate_latest(REGISTRY)
        body = own + await run_in_threadpool(generate_latest, jobs)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
