"""Dependencies: settings, blob store, dispatcher, the caller's tenant, and a job owned by that tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.services import Services
from store import jobs as jobs_dao
from store import logs
from store.models import Job

# The two dependencies every route takes are ``async``: FastAPI runs a plain ``def`` dependency in the
# threadpool, and two threadpool hops were a measurable share of a small /sample request
# (docs/benchmarks.md, sampling). Neither blocks: the tenant comes from the key cache, and only a key
# not verified in the last ``auth_cache_s`` seconds goes to the database, in the threadpool.


async def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]


async def current_tenant(request: Request, svc: ServicesDep) -> str:
    """The caller's tenant from its API key (``api/auth.py``); 401 when a key is required and missing/invalid."""
    tenant = svc.auth.cached_tenant(request)
    if tenant is None:
        tenant = await run_in_threadpool(svc.auth.tenant, request)
    logs.tenant.set(tenant)  # this request's log records carry it (store/logs.py)
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]


def owned_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    job = jobs_dao.get(svc.settings.database_url, job_id, tenant)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    logs.job_id.set(job.id)
    return job


JobDep = Annotated[Job, Depends(owned_job)]
