"""/jobs: submit, list, inspect, cancel, artifacts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.compute import background_priority, run_torch
from api.deps import JobDep, ServicesDep, TenantDep
from api.errors import ApiError, describe_errors
from api.schemas import Artifact, JobList, JobPublic, JobSpec, Preview
from api.services import Services
from api.uploads import UploadRoute, read_upload, validate_target, validate_target_off_process
from api.views import job_public
from core.data import load_target_bytes
from core.images import grid_png
from core.options import MethodError, RunConfig, SourceInfo, check_sources, resolve, resolved_options
from store import auth as auth_dao
from store import jobs as jobs_dao
from store import logs, webhooks
from store import sources as registry
from store.models import Job

router = APIRouter(tags=["jobs"], route_class=UploadRoute)


def _parse_spec(raw: str) -> JobSpec:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_spec", f"spec is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_spec", describe_errors(exc.errors(), whole="spec")) from exc


def _check_sources(spec: JobSpec, srcs: list[dict]) -> tuple[RunConfig, int]:  # type: ignore[type-arg]
    """Which methods fit which sources (core's rules), checked before anything is stored (the worker would fail later);
    returns the run's config and its step count with its "auto" settings resolved for these sources."""
    try:
        cfg = spec.run_config()
        cfg.validate()
        infos = [SourceInfo(s["id"], s["z_dim"], s["resolution"], s["channels"], s["conditional"], s.get("critic", True)) for s in srcs]
        check_sources(cfg, infos)
    except (MethodError, TypeError) as exc:
        raise ApiError(422, "invalid_spec", str(exc)) from exc
    return cfg, resolve(cfg, infos).total_steps


def _check_quota(svc: Services, tenant: str) -> None:
    limit = auth_dao.job_limit(svc.settings.database_url, tenant, svc.settings.max_concurrent_jobs)
    active = auth_dao.active_jobs(svc.settings.database_url, tenant)
    if active >= limit:
        raise _quota_error(active, limit)


def _quota_error(active: int, limit: int) -> ApiError:
    return ApiError(429, "too_many_jobs", f"you have {active} queued or running jobs, the limit is {limit}; wait for one "
                                          "to finish or cancel one (POST /jobs/{id}/cancel)")


@dataclass
class Submission:
    """A job spec checked against the caller's quota and sources, before its upload is read."""

    spec: JobSpec
    sources: list[dict]  # type: ignore[type-arg]
    cfg: RunConfig
    total_steps: int


async def check_submission(svc: Services, tenant: str, raw_spec: str) -> Submission:
    """Every check that needs no upload: quota, spec, sources, method rules, webhook URL. Blocking work (the database,
    the source registry, DNS) runs off the event loop. Shared by ``POST /jobs`` and gRPC ``minegan.v1.Jobs/Submit``."""
    await run_in_threadpool(_check_quota, svc, tenant)
    job_spec = _parse_spec(raw_spec)
    known = await run_in_threadpool(registry.known, svc.blobs, tenant)
    unknown = [s for s in job_spec.sources if s not in known]
    if unknown:
        raise ApiError(422, "unknown_source", f"sources: unknown source model(s) {unknown}; see GET /models")
    srcs = [known[s] for s in job_spec.sources]
    cfg, total_steps = _check_sources(job_spec, srcs)
    if job_spec.webhook:
        try:
            await run_in_threadpool(webhooks.check_url, job_spec.webhook, svc.settings.webhook_allow_list())  # resolves the host
        except webhooks.WebhookUrlError as exc:
            raise ApiError(422, "invalid_spec", str(exc)) from exc
    return Submission(job_spec, srcs, cfg, total_steps)


async def store_submission(svc: Services, tenant: str, sub: Submission, data: bytes) -> JobPublic:
    """Check the target zip, store it, record the job and enqueue it (after the commit, so a worker always finds it)."""
    src = sub.sources[0]
    if svc.settings.upload_check_process:  # its Python must not hold this process's GIL while samples render
        report = await validate_target_off_process(data, src["channels"], src["resolution"], svc.settings)
    else:
        report = await run_torch(validate_target, data, src["channels"], src["resolution"], svc.settings)
    if sub.spec.batch_size > report["n_images"]:
        raise ApiError(422, "invalid_spec", f"batch_size: {sub.spec.batch_size} is larger than the "
                                            f"{report['n_images']} target images")
    job_id = str(uuid.uuid4())
    logs.job_id.set(job_id)
    upload_key = f"uploads/{job_id}.zip"
    stored = sub.spec.model_dump() | {"options": resolved_options(sub.cfg)}

    def store() -> Job:
        background_priority()  # after the sampling on the event loop (api/compute.py)
        svc.blobs.put(upload_key, data, "application/zip")
        try:  # the quota again, atomically with the insert: concurrent submissions all passed the early check
            job = jobs_dao.create(svc.settings.database_url, job_id=job_id, tenant=tenant, spec=stored, upload_key=upload_key,
                                  total_steps=sub.total_steps, default_limit=svc.settings.max_concurrent_jobs)
        except jobs_dao.QuotaExceeded as exc:
            svc.blobs.delete(upload_key)  # a refused job keeps nothing
            raise _quota_error(exc.active, exc.limit) from exc
        svc.enqueue(job_id)
        return job

    job = await run_in_threadpool(store)
    job.target_report = report
    return job_public(job)


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


@router.get("/jobs/{job_id}/target.png", summary="The job's target images as a thumbnail grid (at most 64)")
async def target_grid(svc: ServicesDep, job: JobDep) -> Response:
    shape = (job.target_report or {}).get("shape") or [1, 28, 28]
    data = await run_in_threadpool(svc.blobs.get, job.upload_key)

    def render() -> bytes:
        images = load_target_bytes(data, int(shape[0]), int(shape[1]), limits=svc.settings.zip_limits(),
                                   max_pixels=svc.settings.max_image_pixels).images[:64]
        return grid_png(images, nrow=8)

    return Response(await run_torch(render), media_type="image/png")


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
