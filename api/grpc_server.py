"""The gRPC side of the service: ``inference.GRPCInferenceService`` (the Open Inference Protocol, KServe v2) over
finished jobs, ``minegan.v1.Jobs`` (submit with the zip streamed in chunks, get, cancel, watch), the standard
health service and reflection.

It runs on the HTTP server's event loop (``grpc.aio``), started by the app's lifespan when a gRPC port is set
(``minegan serve --grpc-port N`` or ``MINEGAN_GRPC_PORT``), so ModelInfer samples on the same thread and from the
same model cache as ``GET /sample`` (``api/oip.py``). Authentication is the REST API key, sent as ``authorization``
metadata (``Bearer <key>`` or the key alone); another tenant's job is NOT_FOUND, as over REST. Errors carry the
REST message, with the status mapped to its gRPC code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from starlette.concurrency import run_in_threadpool

from api import oip
from api.errors import ApiError
from api.schemas import JobPublic
from api.services import Services
from api.services.health import readiness
from api.services.submission import check_submission, store_submission
from api.services.watch import follow
from api.views import job_public
from minegan_grpc import inference_pb2 as pb
from minegan_grpc import inference_pb2_grpc as pb_grpc
from minegan_grpc import jobs_pb2, jobs_pb2_grpc
from store import jobs as jobs_dao
from store.models import Job

log = logging.getLogger(__name__)

CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
         404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
R = TypeVar("R")


def key_of(context: grpc.aio.ServicerContext) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k.lower() == "authorization":
            value = v.decode() if isinstance(v, bytes) else v
            return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()
        if k.lower() == "x-api-key":
            return v.decode() if isinstance(v, bytes) else v
    return None


class _Servicer:
    """Authentication and error mapping shared by the services."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def _tenant(self, context: grpc.aio.ServicerContext, upload: bool = False) -> str:
        """The caller's tenant; with keys required, past the tenant's request (or ``upload``) rate RESOURCE_EXHAUSTED."""
        key = key_of(context)
        tenant = self.svc.auth.cached_tenant_of_key(key)
        if tenant is None:
            tenant = await run_in_threadpool(self.svc.auth.tenant_of_key, key)
        refused = await self.svc.rates.check(tenant, upload)
        if refused is not None:
            raise refused
        return tenant

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[R]]) -> R:
        try:
            return await fn()
        except ApiError as exc:
            await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message, tuple((exc.headers or {}).items()))
            raise  # abort raises; this line is for type checkers


class InferenceService(_Servicer, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, svc: Services, version: str) -> None:
        super().__init__(svc)
        self.version = version

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        checks = await run_in_threadpool(readiness, self.svc)
        return pb.ServerReadyResponse(ready=all(v == "ok" for v in checks.values()))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=self.version, extensions=oip.EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def run() -> pb.ModelReadyResponse:
            tenant = await self._tenant(context)
            try:
                await oip.model_key(self.svc, tenant, request.name)
            except ApiError as exc:
                if exc.status == 409:  # a job that has not finished: a model that is not ready yet
                    return pb.ModelReadyResponse(ready=False)
                raise
            return pb.ModelReadyResponse(ready=True)

        return await self._call(context, run)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def run() -> pb.ModelMetadataResponse:
            meta = await oip.metadata(self.svc, await self._tenant(context), request.name)
            tensors = {k: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[k]] for k in ("inputs", "outputs")}
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"], **tensors)

        return await self._call(context, run)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def run() -> pb.ModelInferResponse:
            tenant = await self._tenant(context)
            inputs = _inputs(request)
            job_id, outs = await oip.infer(self.svc, tenant, request.model_name, inputs, [o.name for o in request.outputs] or None)
            resp = pb.ModelInferResponse(model_name=job_id, model_version="1", id=request.id)
            for t in outs:
                resp.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
                resp.raw_output_contents.append(oip.tensor_bytes(t))
            return resp

        return await self._call(context, run)


class JobsService(_Servicer, jobs_pb2_grpc.JobsServicer):
    """``minegan.v1.Jobs``: the REST job routes' checks and data access, over gRPC."""

    async def Submit(self, request_iterator: AsyncIterator[jobs_pb2.SubmitRequest], context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        async def run() -> jobs_pb2.Job:
            tenant = await self._tenant(context, upload=True)
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("part") != "spec_json":
                raise ApiError(422, "invalid_request", "spec: the first message must carry spec_json (the JobSpec as JSON)")
            sub = await check_submission(self.svc, tenant, first.spec_json)
            limit, chunks, size = self.svc.settings.max_upload_bytes, [], 0
            async for part in request_iterator:
                if part.WhichOneof("part") != "zip_chunk":
                    raise ApiError(422, "invalid_request", "images: after the spec, every message carries zip_chunk")
                size += len(part.zip_chunk)
                if size > limit:  # checked while receiving, as POST /jobs does
                    raise ApiError(413, "upload_too_large", f"images: the upload is larger than {limit} bytes; send fewer or smaller images")
                chunks.append(part.zip_chunk)
            if not size:
                raise ApiError(422, "empty_upload", "images: the upload is empty; stream the zip of PNG/JPEG images after the spec")
            return _job(await store_submission(self.svc, tenant, sub, b"".join(chunks)))

        return await self._call(context, run)

    async def Get(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        async def run() -> jobs_pb2.Job:
            return _job(job_public(await self._owned(context, request.id)))

        return await self._call(context, run)

    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        async def run() -> jobs_pb2.Job:
            tenant = await self._tenant(context)
            job = await run_in_threadpool(jobs_dao.request_cancel, self.svc.settings.database_url, request.id, tenant)
            if job is None:
                raise ApiError(404, "job_not_found", f"no job {request.id}")
            return _job(job_public(job))

        return await self._call(context, run)

    async def Watch(self, request: jobs_pb2.WatchRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[jobs_pb2.JobEvent]:
        await self._call(context, lambda: self._owned(context, request.id))

        async def gone() -> bool:
            return context.done()

        async for event in follow(self.svc, request.id, min(request.after_event_id, 2**62), gone):
            if event is not None:
                yield jobs_pb2.JobEvent(id=event[0], kind=event[1], data_json=json.dumps(event[2]))

    async def _owned(self, context: grpc.aio.ServicerContext, job_id: str) -> Job:
        tenant = await self._tenant(context)
        if len(job_id) > 64:  # as REST's path parameter
            raise ApiError(422, "invalid_request", "id: at most 64 characters")
        job = await run_in_threadpool(jobs_dao.get, self.svc.settings.database_url, job_id, tenant)
        if job is None:
            raise ApiError(404, "job_not_found", f"no job {job_id}")
        return job


def _job(public: JobPublic) -> jobs_pb2.Job:
    err = public.error
    return jobs_pb2.Job(id=public.id, status=public.status, phase=public.phase or "", step=public.step, total_steps=public.total_steps,
                        method=public.method, error_code=err.code if err else "", error_message=err.message if err else "",
                        json=public.model_dump_json())


def _inputs(request: pb.ModelInferRequest) -> list[oip.Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(422, "invalid_request", f"raw_input_contents: {len(raw)} buffers for {len(request.inputs)} inputs")
    out = []
    for i, t in enumerate(request.inputs):
        shape = [int(d) for d in t.shape]
        if raw:
            out.append(oip.tensor_from_raw(t.name, t.datatype, shape, raw[i]))
            continue
        field = _CONTENTS.get(t.datatype)
        if field is None:
            raise ApiError(422, "invalid_request", f"inputs.{t.name}: unsupported datatype {t.datatype!r}")
        data: Any = list(getattr(t.contents, field))
        out.append(oip.tensor_from_list(t.name, t.datatype, shape, data))
    return out


async def start(svc: Services, host: str, port: int, version: str) -> grpc.aio.Server:
    """Serve the inference, health and reflection services on ``host:port``; returns the started server."""
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(svc, version), server)
    jobs_pb2_grpc.add_JobsServicer_to_server(JobsService(svc), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
             health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise RuntimeError(f"gRPC: cannot listen on {host}:{port}")
    await server.start()
    for name in ("", names[0], names[1]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.warning("gRPC (Open Inference Protocol, minegan.v1.Jobs, health, reflection) on %s:%d", host, bound)
    return server
