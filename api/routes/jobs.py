"""/jobs: submit, list, inspect, cancel, artifacts."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import ValidationError

from api.deps import JobDep, ServicesDep, TenantDep
from api.errors import ApiError
from api.schemas import Artifact, JobList, JobPublic, JobSpec
from api.uploads import read_upload, validate_target
from api.views import job_public
from core import zoo
from store import jobs as jobs_dao

router = APIRouter(tags=["jobs"])


def _parse_spec(raw: str) -> JobSpec:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_spec", f"spec is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, "invalid_spec", msg) from exc


@router.post("/jobs", status_code=202, response_model=JobPublic, summary="Submit a transfer job")
async def submit_job(
    svc: ServicesDep,
    tenant: TenantDep,
    images: Annotated[UploadFile, File(description="zip of target images (PNG/JPEG)")],
    spec: Annotated[str, Form(description="JobSpec as JSON")],
) -> JobPublic:
    job_spec = _parse_spec(spec)
    known = {m["id"]: m for m in zoo.available()}
    unknown = [s for s in job_spec.sources if s not in known]
    if unknown:
        raise ApiError(422, "unknown_source", f"sources: unknown source model(s) {unknown}; see GET /models")
    if len(job_spec.sources) > 1:
        raise ApiError(422, "invalid_spec", "sources: mining several GANs at once is not available yet; give one source")
    src = known[job_spec.sources[0]]
    if src["conditional"]:
        raise ApiError(422, "invalid_spec", f"sources: {src['id']} is conditional; use an unconditional source")
    data = await read_upload(images, svc.settings.max_upload_bytes)
    report = validate_target(data, src["channels"], src["resolution"], svc.settings.max_target_images)
    if job_spec.batch_size > report["n_images"]:
        raise ApiError(422, "invalid_spec", f"batch_size: {job_spec.batch_size} is larger than the "
                                            f"{report['n_images']} target images")
    job_id = str(uuid.uuid4())
    upload_key = f"uploads/{job_id}.zip"
    svc.blobs.put(upload_key, data, "application/zip")
    stored = job_spec.model_dump() | {"options": job_spec.run_options()}
    job = jobs_dao.create(svc.settings.database_url, job_id=job_id, tenant=tenant, spec=stored, upload_key=upload_key,
                          total_steps=job_spec.mining_steps + job_spec.finetune_steps)
    svc.enqueue(job_id)  # after the row is committed, so the worker always finds it
    job.target_report = report
    return job_public(job)


@router.get("/jobs", response_model=JobList, summary="List your jobs, newest first")
def list_jobs(
    svc: ServicesDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
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


@router.get("/jobs/{job_id}/artifacts", response_model=list[Artifact], summary="Checkpoints, samples, metrics")
def artifacts(svc: ServicesDep, job: JobDep) -> list[Artifact]:
    keys = svc.blobs.list(f"jobs/{job.id}/")
    return [Artifact(name=k.rsplit("/", 1)[-1], key=k, url=svc.blobs.url(k, svc.settings.presign_expiry_s)) for k in keys]
