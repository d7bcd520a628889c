"""/models: the source models you can mine -- the built-in zoo plus sources registered from fusion jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from api.compute import run_torch
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError, describe_errors
from api.schemas import ModelInfo, UploadConfig
from api.services import Services
from api.uploads import UploadRoute, read_upload
from core import checkpoints, zoo
from core.checkpoints import CheckpointError
from core.formats import ModelFormatError
from core.options import SourceInfo, source_defaults
from store import jobs as jobs_dao
from store import sources as registry

router = APIRouter(tags=["models"], route_class=UploadRoute)


class RegisterModel(BaseModel):
    id: str = Field(description="new source id: lower-case letters, digits, '.', '_', '-'", max_length=63)
    job_id: str = Field(description="a succeeded fusion / fusion++ job whose fused generator becomes the source", max_length=64)


@router.get("/models", response_model=list[ModelInfo], summary="Source models you can mine")
def list_models(svc: ServicesDep, tenant: TenantDep) -> list[ModelInfo]:
    return [model_info(m) for m in registry.known(svc.blobs, tenant).values()]


_UPLOAD_DOC = """Two ways to add a source model you can then mine:

* JSON ``{"id", "job_id"}``: register a succeeded fusion job's fused generator.
* multipart: ``generator`` and optional ``critic`` files, and ``config`` (JSON ``{"id", "family", "config",
  "description"}``). Family ``dcgan64`` or ``minegan``: a state dict, as a torch file (loaded with
  ``weights_only=True``) or safetensors, that must fit the declared layout. Family ``pt2``: a ``torch.export``
  program (``torch.export.save``) of any architecture, read without running anything from the file (no pickles;
  only standard ATen operators). Family ``onnx``: an ONNX graph of any architecture, normalised and converted to
  torch modules (no code from the file runs). Both map z (and, with ``n_classes``, a class input) to images, with
  the declared z distribution and output range; a graph exported at a fixed batch size runs in batches of that size.
  The critic, if given, is a .pt2 program or an ONNX graph
  mapping images to one score each (any architecture, any family) or a state dict of this service's critic
  layout; without one, jobs start a fresh critic with a warm-up. A file is refused (4xx, nothing stored) unless it
  produces finite images of the declared shape.

The source belongs to your tenant."""


@router.post("/models", status_code=201, response_model=ModelInfo, summary="Register or upload a source model",
             description=_UPLOAD_DOC,
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": RegisterModel.model_json_schema()},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["generator", "config"], "properties": {
                     "generator": {"type": "string", "format": "binary"}, "critic": {"type": "string", "format": "binary"},
                     "config": {"type": "string", "minLength": 1, "description": "UploadConfig as JSON"}}}}}}})
async def add_model(request: Request, svc: ServicesDep, tenant: TenantDep) -> ModelInfo:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _upload_model(request, svc, tenant)
    try:
        body = RegisterModel.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_errors(exc.errors())) from exc
    return await run_torch(register_model, body, svc, tenant)


async def _upload_model(request: Request, svc: ServicesDep, tenant: str) -> ModelInfo:
    form = await request.form(max_files=2, max_fields=4)
    try:
        gen, crit, raw = form.get("generator"), form.get("critic"), form.get("config")
        if not isinstance(gen, UploadFile) or not isinstance(raw, str):
            raise ApiError(422, "invalid_request", "multipart needs a 'generator' file and a 'config' JSON field")
        try:
            cfg = UploadConfig.model_validate_json(raw)
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", "config: " + describe_errors(exc.errors())) from exc
        g_bytes = await read_upload(gen, svc.settings.max_upload_bytes)
        c_bytes = await read_upload(crit, svc.settings.max_upload_bytes) if isinstance(crit, UploadFile) else None
    finally:
        await form.close()

    def build() -> ModelInfo:
        try:
            ckpt = zoo.source_from_state_dicts(cfg.id, cfg.family, cfg.config, g_bytes, c_bytes, cfg.description)
            info = registry.register(svc.blobs, tenant, cfg.id, checkpoints.to_bytes(ckpt), origin="upload")
        except FileExistsError as exc:
            raise ApiError(409, "model_exists", str(exc)) from exc
        except (CheckpointError, ModelFormatError) as exc:
            raise ApiError(422, exc.code, str(exc)) from exc
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        return model_info(info)

    return await run_torch(build)


def register_model(body: RegisterModel, svc: Services, tenant: str) -> ModelInfo:
    job = jobs_dao.get(svc.settings.database_url, body.job_id, tenant)
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {body.job_id}")
    key = f"jobs/{job.id}/fused.pt"
    if job.status != "succeeded" or not svc.blobs.exists(key):
        raise ApiError(409, "no_fused_model", f"job {job.id} is {job.status} with method {job.method}; only a succeeded "
                                              "fusion or fusion++ job has a fused generator to register")
    try:
        info = registry.register(svc.blobs, tenant, body.id, svc.blobs.get(key), origin=f"job {job.id}")
    except FileExistsError as exc:
        raise ApiError(409, "model_exists", str(exc)) from exc
    except (ValueError, CheckpointError) as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    return model_info(info)


def model_info(m: dict[str, Any]) -> ModelInfo:
    """A registry entry as the API shows it, with what a job on it runs by default (``core.options.source_defaults``)."""
    return ModelInfo(**m, job_defaults=source_defaults(SourceInfo.of_listing(m)))
