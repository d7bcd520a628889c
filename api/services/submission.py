"""Submitting a job: every check that needs no upload, then the upload's check and the job's record. Shared by
``POST /jobs`` and gRPC ``minegan.v1.Jobs/Submit``."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.compute import background_priority, run_torch
from api.errors import ApiError, describe_errors
from api.schemas import JobPublic, JobSpec, JobSpecBase
from api.services import Services
from api.uploads import validate_target, validate_target_off_process
from api.views import job_public
from core.options import MethodError, PreparedRun, SourceInfo, prepare, resolved_options
from store import auth as auth_dao
from store import jobs as jobs_dao
from store import logs, webhooks
from store import sources as registry
from store.models import Job


def parse_spec(raw: str) -> JobSpecBase:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_spec", f"spec is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        raise ApiError(422, "invalid_spec", "spec is nested too deeply to be a job spec") from exc
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_spec", describe_errors(exc.errors(), whole="spec")) from exc


def check_spec_sources(spec: JobSpecBase, srcs: list[dict]) -> PreparedRun:  # type: ignore[type-arg]
    """Which methods fit which sources (core's rules), checked before anything is stored (the worker would fail later);
    returns the run prepared for these sources (core.options.prepare), which the job stores and the worker runs."""
    try:
        return prepare(spec.run_config(), [SourceInfo.of_listing(s) for s in srcs])
    except (MethodError, TypeError) as exc:
        raise ApiError(422, "invalid_spec", str(exc)) from exc


def check_quota(svc: Services, tenant: str) -> None:
    limit = auth_dao.job_limit(svc.settings.database_url, tenant, svc.settings.max_concurrent_jobs)
    active = auth_dao.active_jobs(svc.settings.database_url, tenant)
    if active >= limit:
        raise quota_error(active, limit)


def quota_error(active: int, limit: int) -> ApiError:
    return ApiError(429, "too_many_jobs", f"you have {active} queued or running jobs, the limit is {limit}; wait for one "
                                          "to finish or cancel one (POST /jobs/{id}/cancel)")


@dataclass
class Submission:
    """A job spec checked against the caller's quota and sources, before its upload is read."""

    spec: JobSpecBase
    sources: list[dict]  # type: ignore[type-arg]
    prepared: PreparedRun


async def check_submission(svc: Services, tenant: str, raw_spec: str) -> Submission:
    """Every check that needs no upload: quota, spec, sources, method rules, webhook URL. Blocking work (the database,
    the source registry, DNS) runs off the event loop. Shared by ``POST /jobs`` and gRPC ``minegan.v1.Jobs/Submit``."""
    await run_in_threadpool(check_quota, svc, tenant)
    job_spec = parse_spec(raw_spec)
    known = await run_in_threadpool(registry.known, svc.blobs, tenant)
    unknown = [s for s in job_spec.sources if s not in known]
    if unknown:
        raise ApiError(422, "unknown_source", f"sources: unknown source model(s) {unknown}; see GET /models")
    srcs = [known[s] for s in job_spec.sources]
    prepared = check_spec_sources(job_spec, srcs)
    if job_spec.webhook:
        try:
            await run_in_threadpool(webhooks.check_url, job_spec.webhook, svc.settings.webhook_allow_list())  # resolves the host
        except webhooks.WebhookUrlError as exc:
            raise ApiError(422, "invalid_spec", str(exc)) from exc
    return Submission(job_spec, srcs, prepared)


async def store_submission(svc: Services, tenant: str, sub: Submission, data: bytes) -> JobPublic:
    """Check the target zip, store it, record the job and enqueue it (after the commit, so a worker always finds it)."""
    src = sub.sources[0]
    async def check() -> dict[str, Any]:
        if svc.settings.upload_check_process:  # its Python must not hold this process's GIL while samples render
            return await validate_target_off_process(data, src["channels"], src["resolution"], svc.settings)
        return await run_torch(validate_target, data, src["channels"], src["resolution"], svc.settings)

    report = await svc.checks.run(tenant, check)  # one check at a time, the tenants in turn (api/fair.py)
    if sub.spec.batch_size > report["n_images"]:
        raise ApiError(422, "invalid_spec", f"batch_size: {sub.spec.batch_size} is larger than the "
                                            f"{report['n_images']} target images")
    job_id = str(uuid.uuid4())
    logs.job_id.set(job_id)
    upload_key = f"uploads/{job_id}.zip"
    stored = sub.spec.model_dump() | {"options": resolved_options(sub.prepared.asked)}

    def store() -> Job:
        background_priority()  # after the sampling on the event loop (api/compute.py)
        svc.blobs.put(upload_key, data, "application/zip")
        try:  # the quota again, atomically with the insert: concurrent submissions all passed the early check
            job = jobs_dao.create(svc.settings.database_url, job_id=job_id, tenant=tenant, spec=stored, upload_key=upload_key,
                                  total_steps=sub.prepared.total_steps, default_limit=svc.settings.max_concurrent_jobs,
                                  run=sub.prepared.run.as_json())
        except jobs_dao.QuotaExceeded as exc:
            svc.blobs.delete(upload_key)  # a refused job keeps nothing
            raise quota_error(exc.active, exc.limit) from exc
        svc.enqueue(job_id)
        return job

    job = await run_in_threadpool(store)
    job.target_report = report
    return job_public(job)
