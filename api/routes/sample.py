"""Sampling from finished jobs: a PNG grid or a zip of PNGs; the same seed gives the same images."""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.compute import CHUNK_VALUES, on_loop, run_torch, sample_on_loop
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.metrics import SAMPLES
from api.services import Services
from core.export import ExportError, describe, export_bytes
from core.images import grid_png, zip_of_pngs
from core.methods import TransferredModel
from store import jobs as jobs_dao
from store.models import Job

router = APIRouter(tags=["samples"])

N = Annotated[int, Query(ge=1, le=256, description="number of images (1..256)")]
Seed = Annotated[int, Query(ge=0, le=2**31 - 1)]
Fmt = Annotated[Literal["png", "zip"], Query(description="png: one grid image; zip: n separate PNGs")]


async def _render(svc: Services, job_id: str, model: TransferredModel, n: int, seed: int, fmt: str) -> Response:
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


def _lookup(svc: Services, job_id: str, tenant: str) -> str:
    """The model key from the database (the caller has already missed ``svc.finished``)."""
    return finished_model(svc, jobs_dao.get(svc.settings.database_url, job_id), job_id, tenant)


async def _respond(svc: Services, job_id: str, model_key: str, n: int, seed: int, fmt: str) -> Response:
    if n > svc.settings.sample_max_n:
        raise ApiError(422, "invalid_request", f"n: at most {svc.settings.sample_max_n}")
    model = svc.models.peek(model_key)
    if model is None:  # loaded from storage once (on the torch helper thread), then served from memory
        model = await run_torch(svc.models.get, model_key)
    # the render itself runs on the event-loop thread, the one thread with an OpenMP team (api/compute.py)
    return await _render(svc, job_id, model, n, seed, fmt)


@router.get("/jobs/{job_id}/sample", summary="Samples from a finished job")
async def sample_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)], n: N = 16, seed: Seed = 0,
                     format: Fmt = "png") -> Response:
    hit = svc.finished.get(job_id)
    key = hit[1] if hit is not None and hit[0] == tenant else await run_in_threadpool(_lookup, svc, job_id, tenant)
    return await _respond(svc, job_id, key, n, seed, format)


@router.get("/sample", summary="Samples from your most recently finished job (or ?job=ID)")
async def sample_latest(svc: ServicesDep, tenant: TenantDep, n: N = 16, seed: Seed = 0, format: Fmt = "png",
                        job: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    if job:
        return await sample_job(svc, tenant, job, n, seed, format)
    job_id, key = await latest_model(svc, tenant)
    return await _respond(svc, job_id, key, n, seed, format)


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


_EXPORT_DOC = """The job's whole sampler as one self-contained file, to run without this service: ``pt2`` (``torch.export.load``)
or ``onnx`` (onnxruntime, Triton's ONNX Runtime backend). Input ``u`` [N, z_dim] float32 ~ N(0, I) (and, for a
family, ``member`` [N] int64); output ``images`` [N, C, H, W] float32 in [-1, 1]. The latents ``?seed=`` draws, and
the header ``X-Minegan-Sampler`` (JSON: inputs, members and pi of a family), are described in core/export.py. Made
once per job and format, then served from storage."""


@router.get("/jobs/{job_id}/export", summary="Download a finished job's sampler as .pt2 or .onnx", description=_EXPORT_DOC,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def export_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)],
                     format: Annotated[Literal["pt2", "onnx"], Query(description="pt2 (torch.export) or onnx")] = "pt2") -> Response:
    key = await run_in_threadpool(_lookup, svc, job_id, tenant)
    blob = f"jobs/{job_id}/export.{format}"

    def load() -> bytes:
        if svc.blobs.exists(blob):
            return svc.blobs.get(blob)
        try:
            data = export_bytes(svc.models.get(key), format)
        except ExportError as exc:
            raise ApiError(422, exc.code, str(exc)) from exc
        svc.blobs.put(blob, data)
        return data

    data = await run_torch(load)
    model = svc.models.peek(key) or await run_torch(svc.models.get, key)
    info = json.dumps(describe(model), separators=(",", ":"))
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="minegan-{job_id[:8]}.{format}"', "X-Minegan-Sampler": info})
