"""/models: the source models you can mine -- the built-in zoo plus sources registered from fusion jobs."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.schemas import ModelInfo
from core.checkpoints import CheckpointError
from store import jobs as jobs_dao
from store import sources as registry

router = APIRouter(tags=["models"])


class RegisterModel(BaseModel):
    id: str = Field(description="new source id: lower-case letters, digits, '.', '_', '-'", max_length=63)
    job_id: str = Field(description="a succeeded fusion / fusion++ job whose fused generator becomes the source", max_length=64)


@router.get("/models", response_model=list[ModelInfo], summary="Source models you can mine")
def list_models(svc: ServicesDep) -> list[ModelInfo]:
    return [ModelInfo(**m) for m in registry.known(svc.blobs).values()]


@router.post("/models", status_code=201, response_model=ModelInfo, summary="Register a fusion job's fused generator as a source")
def register_model(body: RegisterModel, svc: ServicesDep, tenant: TenantDep) -> ModelInfo:
    job = jobs_dao.get(svc.settings.database_url, body.job_id, tenant)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {body.job_id}")
    key = f"jobs/{job.id}/fused.pt"
    if job.status != "succeeded" or not svc.blobs.exists(key):
        raise ApiError(409, "no_fused_model", f"job {job.id} is {job.status} with method {job.method}; only a succeeded "
                                              "fusion or fusion++ job has a fused generator to register")
    try:
        info = registry.register(svc.blobs, body.id, svc.blobs.get(key), origin=f"job {job.id}")
    except FileExistsError as exc:
        raise ApiError(409, "model_exists", str(exc)) from exc
    except (ValueError, CheckpointError) as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    return ModelInfo(**info)
