"""The FastAPI application factory.

Embedded mode (no ``MINEGAN_BROKER_URL``): SQLite + local blobs + a built-in worker (no broker) that runs each job in a child process.
Service mode: jobs go to Celery (Redis) and artifacts to S3; see docker-compose.yml.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api import VERSION, contract, errors, metrics
from api.compute import RenderPriority, claim_render_team, start_checker
from api.fastpath import SampleFastPath
from api.limits import BodyLimitMiddleware, KeyFirstMiddleware
from api.routes import blobs, health, jobs, models, sample, ui, v2
from api.routes import events as event_routes
from api.services import LatestJobs, ModelCache, Services
from api.watchdog import Watchdog, heartbeat
from core.model_file import pick_device
from store import events, logs
from store import jobs as jobs_dao
from store.blobs import make_blob_store
from store.db import upgrade
from store.settings import Settings, get_settings
from worker.embedded import EmbeddedWorker
from worker.housekeeping import housekeeping

log = logging.getLogger(__name__)


def _celery_services(settings: Settings) -> tuple:  # type: ignore[type-arg]
    from worker.celery_app import app as celery_app

    def enqueue(job_id: str) -> None:
        celery_app.send_task("minegan.run_job", args=[job_id], queue=settings.queue)

    def check_broker() -> None:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    return enqueue, check_broker




def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade(settings.database_url)  # Alembic migrations, never create_all
        blob_store = make_blob_store(settings)
        # run_worker: this process also runs jobs (embedded mode), the sweeper and webhook delivery, as `minegan worker`
        # would (worker/housekeeping.py); `minegan serve` turns it off and starts `minegan worker` beside the API
        worker = None
        if settings.embedded and settings.run_worker:
            worker = EmbeddedWorker(settings)
            worker.start(jobs_dao.unfinished(settings.database_url))
            app.state.worker = worker
            enqueue, check_broker = worker.enqueue, (lambda: None)
        elif settings.embedded:  # the worker process takes the jobs this process queues, from the database
            enqueue, check_broker = (lambda job_id: None), (lambda: None)
        else:
            enqueue, check_broker = _celery_services(settings)
        if not settings.auth_required:
            log.warning("authentication is OFF: every caller is tenant 'default' (set MINEGAN_AUTH=required to need API keys)")
        latest = LatestJobs(settings.latest_cache_s)
        subscriber = None
        if worker is not None:  # the worker is in this process: it tells the cache directly
            events.add_local_listener(latest.invalidate)
            latest.set_live(True)
        elif settings.embedded:  # the worker process finishes the jobs and cannot tell this cache
            latest.set_live(False)
        elif (url := events.redis_url(settings)) is not None:
            subscriber = events.Subscriber(url, latest.invalidate, latest.set_live)
            subscriber.start()
        else:
            log.warning("broker is not Redis: GET /sample asks the database for the latest job on every request")
        if settings.upload_check_process:
            start_checker()  # before the render priority: the checker's threads here (and its process) must not inherit it
        RenderPriority.nice = settings.render_nice
        claim_render_team()  # here, on the event loop, before any torch work there
        app.state.services = Services(settings=settings, blobs=blob_store, enqueue=enqueue,
                                      models=ModelCache(blob_store, settings.model_cache_size, pick_device(settings.serve_device)),
                                      check_broker=check_broker, latest=latest)
        background = housekeeping(settings, enqueue) if settings.run_worker else []
        dog = Watchdog(settings.loop_stall_warn_s) if settings.loop_stall_warn_s > 0 else None
        if dog is not None:
            dog.start()
        beat = asyncio.create_task(heartbeat(dog))  # the loop's lag, and its stalls (api/watchdog.py)
        grpc = None
        if settings.grpc_port:  # on this event loop, beside HTTP: the same model cache and sampling thread; several
            from api import grpc_server  # API processes each listen on the port (gRPC sets SO_REUSEPORT)

            grpc = await grpc_server.start(app.state.services, settings.grpc_host, settings.grpc_port, VERSION)
        yield
        if grpc is not None:
            await grpc.stop(2)
        for task in background:
            task.cancel()
        beat.cancel()
        if dog is not None:
            dog.stop()
        if subscriber is not None:
            subscriber.stop()
        events.remove_local_listener(latest.invalidate)
        if worker is not None:
            worker.stop()

    app = FastAPI(title="MineGAN-as-a-service", version=VERSION, lifespan=lifespan,
                  description="Few-shot GAN transfer by mining (MineGAN / MineGAN++). POST a zip of target images "
                              "to /jobs, poll /jobs/{id}, then GET /sample?n=16.")
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(SampleFastPath)  # a cached sample request skips the rest (api/fastpath.py)
    app.add_middleware(KeyFirstMiddleware)  # with keys required: the key before any of the body
    app.add_middleware(metrics.RequestMiddleware)  # every request (the fast path's too) gets an id and is timed
    jobs_registry = CollectorRegistry()  # collected at scrape time only (the database is migrated at startup)
    jobs_registry.register(metrics.JobsCollector(settings.database_url))
    app.add_route("/metrics", metrics.endpoint(jobs_registry), include_in_schema=False)
    for r in (jobs.router, event_routes.router, sample.router, models.router, health.router, blobs.router, ui.router, v2.router):
        app.include_router(r)
    contract.install(app)  # every operation documents its error statuses and body (api/contract.py)
    return app


def served_app() -> FastAPI:
    """The app of each process of ``minegan serve --workers N`` (uvicorn's factory, called in every process): settings
    from the environment, which the command filled, and its log format and level (cli/main.py, cmd_serve)."""
    settings = get_settings()
    logs.setup(settings.log_format, int(os.environ.get("MINEGAN_SERVE_LOG_LEVEL", logging.WARNING)))
    return create_app(settings)
