"""Dependencies: settings, blob store, dispatcher, the caller's tenant, and a job owned by that tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from api.errors import ApiError
from api.services import Services
from store import jobs as jobs_dao
from store.models import Job


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(services)]


def current_tenant(request: Request, svc: ServicesDep) -> str:
    """The caller's tenant from its API key (``api/auth.py``); 401 when a key is required and missing/invalid."""
    return svc.auth.tenant(request)


TenantDep = Annotated[str, Depends(current_tenant)]


def owned_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)]) -> Job:
    job = jobs_dao.get(svc.settings.database_url, job_id, tenant)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return job


JobDep = Annotated[Job, Depends(owned_job)]
