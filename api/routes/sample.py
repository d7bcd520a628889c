"""Sampling from finished jobs: a PNG grid or a zip of PNGs; the same seed gives the same images."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.services import Services
from core.images import grid_png, zip_of_pngs
from store import jobs as jobs_dao
from store.models import Job

router = APIRouter(tags=["samples"])

N = Annotated[int, Query(ge=1, le=256, description="number of images (1..256)")]
Seed = Annotated[int, Query(ge=0, le=2**31 - 1)]
Fmt = Annotated[Literal["png", "zip"], Query(description="png: one grid image; zip: n separate PNGs")]


def _render(svc: Services, job_id: str, model_key: str, n: int, seed: int, fmt: str) -> Response:
    if n > svc.settings.sample_max_n:
        raise ApiError(422, "invalid_request", f"n: at most {svc.settings.sample_max_n}")
    model = svc.models.get(model_key)  # loaded from storage once, then served from memory
    images = model.sample(n, seed=seed)
    headers = {"X-Job-Id": job_id, "X-Seed": str(seed)}
    if fmt == "zip":
        headers["Content-Disposition"] = f'attachment; filename="samples-{job_id[:8]}-{seed}.zip"'
        return Response(zip_of_pngs(images), media_type="application/zip", headers=headers)
    return Response(grid_png(images), media_type="image/png", headers=headers)


def _finished(svc: Services, job: Job | None, job_id: str, tenant: str) -> str:
    """The model key of a succeeded job owned by ``tenant`` (remembered in ``svc.finished``), else a 404/409."""
    if job is None or job.tenant != tenant:
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    if job.status != "succeeded" or not job.model_key:
        raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status}; samples exist once it has succeeded")
    svc.finished.put(job.id, job.tenant, job.model_key)
    return job.model_key


def _model_key(svc: Services, job_id: str, tenant: str) -> str:
    hit = svc.finished.get(job_id)
    if hit is not None and hit[0] == tenant:
        return hit[1]
    return _finished(svc, jobs_dao.get(svc.settings.database_url, job_id), job_id, tenant)


@router.get("/jobs/{job_id}/sample", summary="Samples from a finished job")
def sample_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)], n: N = 16, seed: Seed = 0,
               format: Fmt = "png") -> Response:
    return _render(svc, job_id, _model_key(svc, job_id, tenant), n, seed, format)


@router.get("/sample", summary="Samples from your most recently finished job (or ?job=ID)")
def sample_latest(svc: ServicesDep, tenant: TenantDep, n: N = 16, seed: Seed = 0, format: Fmt = "png",
                  job: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    if job:
        return _render(svc, job, _model_key(svc, job, tenant), n, seed, format)
    # "most recent" can change whenever any worker finishes a job, so this one asks the database every time
    row = jobs_dao.latest_succeeded(svc.settings.database_url, tenant)
    if row is None:
        raise ApiError(404, "job_not_found", "no finished job yet; submit one with POST /jobs")
    return _render(svc, row.id, _finished(svc, row, row.id, tenant), n, seed, format)
