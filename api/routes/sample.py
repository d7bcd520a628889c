"""Sampling from finished jobs: a PNG grid or a zip of PNGs; the same seed gives the same images."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import JobDep, ServicesDep, TenantDep
from api.errors import ApiError
from core.images import grid_png, zip_of_pngs
from store import jobs as jobs_dao
from store.models import Job

router = APIRouter(tags=["samples"])

N = Annotated[int, Query(ge=1, le=256, description="number of images (1..256)")]
Seed = Annotated[int, Query(ge=0, le=2**31 - 1)]
Fmt = Annotated[Literal["png", "zip"], Query(description="png: one grid image; zip: n separate PNGs")]


def _render(svc, job: Job, n: int, seed: int, fmt: str) -> Response:  # type: ignore[no-untyped-def]
    if job.status != "succeeded" or not job.model_key:
        raise ApiError(409, "job_not_finished", f"job {job.id} is {job.status}; samples exist once it has succeeded")
    if n > svc.settings.sample_max_n:
        raise ApiError(422, "invalid_request", f"n: at most {svc.settings.sample_max_n}")
    model = svc.models.get(job.model_key)
    images = model.sample(n, seed=seed)
    headers = {"X-Job-Id": job.id, "X-Seed": str(seed)}
    if fmt == "zip":
        headers["Content-Disposition"] = f'attachment; filename="samples-{job.id[:8]}-{seed}.zip"'
        return Response(zip_of_pngs(images), media_type="application/zip", headers=headers)
    return Response(grid_png(images), media_type="image/png", headers=headers)


@router.get("/jobs/{job_id}/sample", summary="Samples from a finished job")
def sample_job(svc: ServicesDep, job: JobDep, n: N = 16, seed: Seed = 0, format: Fmt = "png") -> Response:
    return _render(svc, job, n, seed, format)


@router.get("/sample", summary="Samples from your most recently finished job (or ?job=ID)")
def sample_latest(svc: ServicesDep, tenant: TenantDep, n: N = 16, seed: Seed = 0, format: Fmt = "png",
                  job: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    row = jobs_dao.get(svc.settings.database_url, job, tenant) if job else jobs_dao.latest_succeeded(svc.settings.database_url, tenant)
    if row is None:
        raise ApiError(404, "job_not_found", f"no job {job}" if job else "no finished job yet; submit one with POST /jobs")
    return _render(svc, row, n, seed, format)
