"""Sampling from finished jobs: a PNG grid or a zip of PNGs; the same seed gives the same images."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.compute import run_torch
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.services.sampling import latest_model, lookup, respond
from core.export import ExportError, describe, export_bytes

router = APIRouter(tags=["samples"])

N = Annotated[int, Query(ge=1, le=256, description="number of images (1..256)")]
Seed = Annotated[int, Query(ge=0, le=2**31 - 1)]
Fmt = Annotated[Literal["png", "zip"], Query(description="png: one grid image; zip: n separate PNGs")]


@router.get("/jobs/{job_id}/sample", summary="Samples from a finished job")
async def sample_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)], n: N = 16, seed: Seed = 0,
                     format: Fmt = "png") -> Response:
    hit = svc.finished.get(job_id)
    key = hit[1] if hit is not None and hit[0] == tenant else await run_in_threadpool(lookup, svc, job_id, tenant)
    return await respond(svc, job_id, key, n, seed, format)


@router.get("/sample", summary="Samples from your most recently finished job (or ?job=ID)")
async def sample_latest(svc: ServicesDep, tenant: TenantDep, n: N = 16, seed: Seed = 0, format: Fmt = "png",
                        job: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    if job:
        return await sample_job(svc, tenant, job, n, seed, format)
    job_id, key = await latest_model(svc, tenant)
    return await respond(svc, job_id, key, n, seed, format)


_EXPORT_DOC = """The job's whole sampler as one self-contained file, to run without this service: ``pt2`` (``torch.export.load``)
or ``onnx`` (onnxruntime, Triton's ONNX Runtime backend). Input ``u`` [N, z_dim] float32 ~ N(0, I) (and, for a
family, ``member`` [N] int64); output ``images`` [N, C, H, W] float32 in [-1, 1]. The latents ``?seed=`` draws, and
the header ``X-Minegan-Sampler`` (JSON: inputs, members and pi of a family), are described in core/export.py. Made
once per job and format, then served from storage."""


@router.get("/jobs/{job_id}/export", summary="Download a finished job's sampler as .pt2 or .onnx", description=_EXPORT_DOC,
            responses={200: {"content": {"application/octet-stream": {}}}})
async def export_job(svc: ServicesDep, tenant: TenantDep, job_id: Annotated[str, Path(max_length=64)],
                     format: Annotated[Literal["pt2", "onnx"], Query(description="pt2 (torch.export) or onnx")] = "pt2") -> Response:
    key = await run_in_threadpool(lookup, svc, job_id, tenant)
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
