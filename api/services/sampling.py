"""Sampling a finished job: which model a caller may sample, and the rendered PNG grid or zip. Shared by REST
(``/jobs/{id}/sample``, ``/sample``), the fast path (api/fastpath.py), ``/v2`` and gRPC (api/oip.py)."""

from __future__ import annotations

import time

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.compute import CHUNK_VALUES, on_loop, run_torch, sample_on_loop
from api.errors import ApiError
from api.metrics import SAMPLES
from api.services import Services
from core.images import grid_png, zip_of_pngs
from core.model_file import TransferredModel
from store import jobs as jobs_dao
from store.models import Job


async def render(svc: Services, job_id: str, model: TransferredModel, n: int, seed: int, fmt: str) -> Response:
    """Generate and encode ``n`` samples of a loaded model, on the event-loop thread (api/compute.py)."""
    t0 = time.perf_counter()
    images = await sample_on_loop(model, n, seed, svc.batcher)  # == model.sample(n, seed), in pieces or batched
    t1 = time.perf_counter()
    encode = zip_of_pngs if fmt == "zip" else grid_png
    if n * model.values_per_image <= CHUNK_VALUES:  # small: encoded here, no thread hop
        body = on_loop(encode, images)
    else:  # a large result: off the loop, on the helper (PIL's zlib releases the GIL)
        body = await run_torch(encode, images)
    t2 = time.perf_counter()
    SAMPLES.labels("rest").observe(t2 - t0)
    headers = {"X-Job-Id": job_id, "X-Seed": str(seed),
               "Server-Timing": f"generate;dur={1000 * (t1 - t0):.2f}, encode;dur={1000 * (t2 - t1):.2f}"}
    if fmt == "zip":
        headers["Content-Disposition"] = f'attachment; filename="samples-{job_id[:8]}-{seed}.zip"'
        return Response(body, media_type="application/zip", headers=headers)
    return Response(body, media_type="image/png", headers=headers)


def finished_model(svc: Services, job: Job | None, job_id: str, tenant: str) -> str:
    """The model key of a succeeded job owned by ``tenant`` (remembered in ``svc.finished``), else a 404/409."""
    if job is None or job.tenant != tenant:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    if job.status != "succeeded" or not job.model_key:
        raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status}; samples exist once it has succeeded")
    svc.finished.put(job.id, job.tenant, job.model_key)
    return job.model_key


def lookup(svc: Services, job_id: str, tenant: str) -> str:
    """The model key from the database (the caller has already missed ``svc.finished``)."""
    return finished_model(svc, jobs_dao.get(svc.settings.database_url, job_id), job_id, tenant)


async def respond(svc: Services, job_id: str, model_key: str, n: int, seed: int, fmt: str) -> Response:
    if n > svc.settings.sample_max_n:
        raise ApiError(422, "invalid_request", f"n: at most {svc.settings.sample_max_n}")
    model = svc.models.peek(model_key)
    if model is None:  # loaded from storage once (on the torch helper thread), then served from memory
        model = await run_torch(svc.models.get, model_key)
    # the render itself runs on the event-loop thread, the one thread with an OpenMP team (api/compute.py)
    return await render(svc, job_id, model, n, seed, fmt)


async def latest_model(svc: Services, tenant: str) -> tuple[str, str]:
    """(job id, model key) of the tenant's newest finished job; 404 if there is none."""
    # "most recent" changes whenever a worker finishes one of the tenant's jobs: the answer is cached
    # only while the workers' job-succeeded notifications reach this process (api/services.LatestJobs),
    # else it is one indexed two-column query
    latest = svc.latest.get(tenant)
    if latest is None:
        token = svc.latest.token()
        latest = await run_in_threadpool(jobs_dao.latest_model, svc.settings.database_url, tenant)
        if latest is None:
            raise ApiError(404, "job_not_found", "no finished job yet; submit one with POST /jobs")
        svc.latest.put(tenant, latest[0], latest[1], token)
        svc.finished.put(latest[0], tenant, latest[1])
    return latest
