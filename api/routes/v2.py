"""/v2: the Open Inference Protocol (KServe v2) over REST, the twin of the gRPC service (``api/oip.py`` does the work).

JSON tensors (``data``) and the binary tensor extension (``Inference-Header-Content-Length``: a JSON header, then
each tensor's bytes; ``binary_data_size`` names their length) are both understood; ``png`` (BYTES) always comes back
binary, ``images`` as the request asks (``binary_data`` per output, ``binary_data_output`` for all).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api import VERSION, oip
from api.deps import ServicesDep, TenantDep
from api.errors import ApiError
from api.services.health import readiness

router = APIRouter(prefix="/v2", tags=["inference (v2)"])
ModelName = Annotated[str, Path(max_length=64, description="a finished job's id, or latest")]


@router.get("/health/live", summary="Server live (OIP)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (OIP)")
async def ready(svc: ServicesDep) -> JSONResponse:
    ok = all(v == "ok" for v in (await run_in_threadpool(readiness, svc)).values())
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", summary="Server metadata (OIP)")
async def server_metadata() -> dict[str, Any]:
    return {"name": oip.SERVER_NAME, "version": VERSION, "extensions": oip.EXTENSIONS}


@router.get("/models/{name}", summary="Model metadata (OIP): a finished job's inputs and outputs")
async def model_metadata(svc: ServicesDep, tenant: TenantDep, name: ModelName) -> dict[str, Any]:
    return await oip.metadata(svc, tenant, name)


@router.get("/models/{name}/ready", summary="Model ready (OIP): 200 when the job has finished")
async def model_ready(svc: ServicesDep, tenant: TenantDep, name: ModelName) -> dict[str, Any]:
    job_id, _ = await oip.model_key(svc, tenant, name)
    return {"name": job_id, "ready": True}


_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "shape", "datatype", "data"],
                   "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                  "datatype": {"type": "string", "enum": [*oip.DTYPES, "BYTES"]}, "data": {"type": "array"},
                                  "parameters": {"type": "object"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}}}}}


@router.post("/models/{name}/infer", summary="Samples of a finished job (OIP infer)", openapi_extra=_INFER_BODY,
             description="Inputs `n` (INT32 [1]), `seed` (INT64 [1]), `class` (INT32 [1], conditional sources); outputs "
                         "`images` (UINT8 [n, H, W, C]) and `png` (BYTES [n]): the pixels and files of "
                         "`GET /jobs/{id}/sample?format=zip` with the same seed.")
async def infer(svc: ServicesDep, tenant: TenantDep, name: ModelName, request: Request) -> Response:
    body = await request.body()
    req, binary = _split(body, request.headers.get("inference-header-content-length"))
    inputs = _inputs(req, binary)
    wanted, binary_out = _outputs(req)
    job_id, outs = await oip.infer(svc, tenant, name, inputs, [w for w, _ in wanted] or None)
    return _response(job_id, req.get("id", ""), outs, dict(wanted), binary_out)


def _split(body: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    try:
        n = int(header_len) if header_len is not None else len(body)
        if not 0 <= n <= len(body):
            raise ValueError(f"Inference-Header-Content-Length {n} is outside the {len(body)}-byte body")
        req = json.loads(body[:n])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(422, "invalid_request", f"the inference request is not JSON: {exc}") from exc
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ApiError(422, "invalid_request", "inputs: a list of tensors {name, shape, datatype, data} is required")
    return req, body[n:]


def _inputs(req: dict[str, Any], binary: bytes) -> list[oip.Tensor]:
    out, offset = [], 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= set(t):
            raise ApiError(422, "invalid_request", f"inputs.{i}: name, shape and datatype are required")
        name, shape, dtype = str(t["name"]), t["shape"], str(t["datatype"])
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ApiError(422, "invalid_request", f"inputs.{name}: shape must be a list of non-negative integers")
        size = _params(t, f"inputs.{name}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ApiError(422, "invalid_request", f"inputs.{name}: binary_data_size {size} runs past the binary data")
            out.append(oip.tensor_from_raw(name, dtype, shape, binary[offset : offset + size]))
            offset += size
        elif "data" in t:
            out.append(oip.tensor_from_list(name, dtype, shape, t["data"]))
        else:
            raise ApiError(422, "invalid_request", f"inputs.{name}: data (or binary_data_size) is required")
    return out


def _outputs(req: dict[str, Any]) -> tuple[list[tuple[str, bool]], bool]:
    default_binary = bool(_params(req, "parameters").get("binary_data_output", False))
    wanted = []
    outputs = req.get("outputs") or []
    if not isinstance(outputs, list):
        raise ApiError(422, "invalid_request", "outputs: a list of requested outputs {name, parameters} is expected")
    for o in outputs:
        if not isinstance(o, dict) or "name" not in o:
            raise ApiError(422, "invalid_request", "outputs: each requested output needs a name")
        wanted.append((str(o["name"]), bool(_params(o, f"outputs.{o['name']}").get("binary_data", default_binary))))
    return wanted, default_binary


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_request", f"{where}: parameters must be an object")
    return params


def _response(job_id: str, req_id: str, outs: list[oip.Tensor], binary_of: dict[str, bool], default_binary: bool) -> Response:
    head: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in outs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.datatype == "BYTES" or binary_of.get(t.name, default_binary):
            raw = oip.tensor_bytes(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = t.data.reshape(-1).tolist()
        head.append(entry)
    header = json.dumps({"model_name": job_id, "model_version": "1", "id": req_id, "outputs": head}).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
