"""The FastAPI application factory.

Embedded mode (no ``MINEGAN_BROKER_URL``): SQLite + local blobs + an in-process worker thread.
Service mode: jobs go to Celery (Redis) and artifacts to S3; see docker-compose.yml.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.routes import blobs, health, jobs, models, sample
from api.services import ModelCache, Services
from store.blobs import make_blob_store
from store.db import upgrade
from store.settings import Settings, get_settings

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
        worker = None
        if settings.embedded:
            from store import jobs as jobs_dao
            from worker.embedded import EmbeddedWorker

            worker = EmbeddedWorker(settings, blob_store)
            pending = [j.id for status in ("running", "queued") for j in jobs_dao.list_jobs(settings.database_url, "default", 1000, 0, status)[0]]
            worker.start(pending[::-1])
            enqueue, check_broker = worker.enqueue, (lambda: None)
            log.warning("embedded mode: SQLite/local storage and an in-process worker; no authentication")
        else:
            enqueue, check_broker = _celery_services(settings)
        app.state.services = Services(settings=settings, blobs=blob_store, enqueue=enqueue,
                                      models=ModelCache(blob_store, settings.model_cache_size), check_broker=check_broker)
        yield
        if worker is not None:
            worker.stop()

    app = FastAPI(title="MineGAN-as-a-service", version="0.1.0", lifespan=lifespan,
                  description="Few-shot GAN transfer by mining (MineGAN / MineGAN++). POST a zip of target images "
                              "to /jobs, poll /jobs/{id}, then GET /sample?n=16.")
    errors.install(app)
    for r in (jobs.router, sample.router, models.router, health.router, blobs.router):
        app.include_router(r)
    return app
