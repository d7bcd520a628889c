"""/jobs: submit, list, inspect, cancel, artifacts."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.compute import run_torch
from api.deps import JobDep, ServicesDep, TenantDep
from api.schemas import Artifact, JobList, JobPublic, Preview
from api.services.submission import check_submission, store_submission
from api.uploads import UploadRoute, read_upload
from api.views import job_public
from core.data import load_target_bytes
from core.images import grid_png
from store import jobs as jobs_dao

router = APIRouter(tags=["jobs"], route_class=UploadRoute)


@router.post("/jobs", status_code=202, response_model=JobPublic, summary="Submit a transfer job")
async def submit_job(
    svc: ServicesDep,
    tenant: TenantDep,
    images: Annotated[UploadFile, File(description="zip of target images (PNG/JPEG)")],
    spec: Annotated[str, Form(min_length=1, description="JobSpec as JSON")],
) -> JobPublic:
    sub = await check_submission(svc, tenant, spec)
    data = await read_upload(images, svc.settings.max_upload_bytes)
    return await store_submission(svc, tenant, sub, data)


@router.get("/jobs", response_model=JobList, summary="List your jobs, newest first")
def list_jobs(
    svc: ServicesDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|canceled)$")] = None,
) -> JobList:
    rows, total = jobs_dao.list_jobs(svc.settings.database_url, tenant, limit, offset, status)
    return JobList(items=[job_public(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobPublic, summary="A job's status, progress, losses, metrics")
def get_job(job: JobDep) -> JobPublic:
    return job_public(job)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, summary="Cancel a queued or running job")
def cancel_job(svc: ServicesDep, tenant: TenantDep, job: JobDep) -> JobPublic:
    updated = jobs_dao.request_cancel(svc.settings.database_url, job.id, tenant)
    assert updated is not None
    return job_public(updated)


_GRID_LOCKS: dict[str, asyncio.Lock] = {}


@router.get("/jobs/{job_id}/target.png", summary="The job's target images as a thumbnail grid (at most 64)")
async def target_grid(svc: ServicesDep, job: JobDep) -> Response:
    """Decoded and drawn once per job, then served from storage: repeated requests cost other tenants nothing."""
    key = f"jobs/{job.id}/target.png"
    lock = _GRID_LOCKS.setdefault(job.id, asyncio.Lock())
    async with lock:  # concurrent first requests wait for one render
        if not await run_in_threadpool(svc.blobs.exists, key):
            shape = (job.target_report or {}).get("shape") or [1, 28, 28]
            data = await run_in_threadpool(svc.blobs.get, job.upload_key)

            def render() -> bytes:
                images = load_target_bytes(data, int(shape[0]), int(shape[1]), limits=svc.settings.zip_limits(),
                                           max_pixels=svc.settings.max_image_pixels).images[:64]
                return grid_png(images, nrow=8)

            await run_in_threadpool(svc.blobs.put, key, await run_torch(render), "image/png")
    _GRID_LOCKS.pop(job.id, None)
    return Response(await run_in_threadpool(svc.blobs.get, key), media_type="image/png")


@router.get("/jobs/{job_id}/previews", response_model=list[Preview], summary="Sample grids stored during training")
def previews(svc: ServicesDep, job: JobDep) -> list[Preview]:
    """A 4x4 grid at a fixed seed every few steps (about ten per job), oldest first: watch the samples move."""
    keys = [k for k in svc.blobs.list(f"jobs/{job.id}/previews/") if k.endswith(".png")]
    return [Preview(step=int(k.rsplit("-", 1)[1][:-4]), key=k, url=svc.blobs.url(k, svc.settings.presign_expiry_s))
            for k in sorted(keys)]


@router.get("/jobs/{job_id}/artifacts", response_model=list[Artifact], summary="Checkpoints, samples, metrics")
def artifacts(svc: ServicesDep, job: JobDep) -> list[Artifact]:
    keys = svc.blobs.list(f"jobs/{job.id}/")
    return [Artifact(name=k.rsplit("/", 1)[-1], key=k, url=svc.blobs.url(k, svc.settings.presign_expiry_s)) for k in keys]
