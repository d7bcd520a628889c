"""The error half of the OpenAPI contract: every operation documents the error statuses it can answer, with the
error body it sends, so a generated client knows them.

FastAPI documents only a route's success and its request-validation 422 (with its own schema, which this API never
sends). :func:`install` rewrites the schema once: the shared ``Error`` body (``{"error": {"code", "message"}}``;
``/v2`` operations send the Open Inference Protocol's ``{"error": message}``), 422 and 401 on every operation that
takes input or a key, 404 where a path names a job or model, 405 with ``Allow`` for methods a path lacks, and the
statuses particular routes answer (400, 409, 413, 429, 503).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import JobSpec, UploadConfig

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
OIP_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
REASONS = {400: "a malformed request body (e.g. broken multipart)", 401: "no valid API key",
           404: "no such job or model of yours", 405: "method not allowed (see Allow)",
           409: "the job has not succeeded (or the id is taken)", 413: "the upload or request is too large",
           422: "invalid input (the message names the field)", 429: "too many queued or running jobs", 503: "not ready"}

# statuses of particular operations beyond the generic ones, by (method, path)
SPECIFIC: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/jobs"): (400, 413, 429),
    ("get", "/jobs/{job_id}/sample"): (409,),
    ("get", "/sample"): (404, 409),
    ("post", "/models"): (400, 404, 409, 413),
    ("get", "/readyz"): (503,),
    ("get", "/v2/health/ready"): (503,),
    ("get", "/v2/models/{name}"): (409,),
    ("get", "/v2/models/{name}/ready"): (409,),
    ("post", "/v2/models/{name}/infer"): (400, 409),
}
OPEN = {"/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready"}  # no key needed, no input


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update({"Error": ERROR, "OipError": OIP_ERROR})
            schema["components"]["schemas"].pop("HTTPValidationError", None)
            schema["components"]["schemas"].pop("ValidationError", None)
            for path, item in schema["paths"].items():
                for method, op in item.items():
                    _document(path, method, op)
            _link_jobs(schema)
            _json_parts(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _component(schema: dict[str, Any], model: Any) -> dict[str, str]:
    """A pydantic model's JSON schema as a component (its nested models too); returns the reference to it."""
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema["components"]["schemas"]
    components.update(body.pop("$defs", {}))
    components[model.__name__] = body
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_parts(schema: dict[str, Any]) -> None:
    """The multipart parts that carry JSON documents (a job's ``spec``, an upload's ``config``) declared as JSON with
    their schemas (OpenAPI's ``encoding`` with ``contentType: application/json``), not as free strings; the server reads
    them as text either way. The form has no other parts (the server refuses a form with more fields)."""
    parts = {("/jobs", "images", "spec", JobSpec): ["images", "spec"], ("/models", "generator", "config", UploadConfig): ["generator", "config"]}
    for (path, file_part, json_part, model), required in parts.items():
        content = schema["paths"].get(path, {}).get("post", {}).get("requestBody", {}).get("content", {})
        if "multipart/form-data" not in content:
            continue
        properties: dict[str, Any] = {file_part: {"type": "string", "format": "binary"}, json_part: _component(schema, model)}
        if path == "/models":
            properties["critic"] = {"type": "string", "format": "binary"}
        content["multipart/form-data"] = {
            "schema": {"type": "object", "required": required, "properties": properties, "additionalProperties": False},
            "encoding": {json_part: {"contentType": "application/json"}}}
    schema["components"]["schemas"].pop("Body_submit_job_jobs_post", None)


def _link_jobs(schema: dict[str, Any]) -> None:
    """OpenAPI links from the job a submission returns to every operation on ``/jobs/{job_id}``: clients (and
    schemathesis's stateful phase) can follow a job from its creation."""
    created = schema["paths"].get("/jobs", {}).get("post", {}).get("responses", {}).get("202")
    if created is None:
        return
    links = created.setdefault("links", {})
    for path, item in schema["paths"].items():
        if path.startswith("/jobs/{job_id}"):
            for op in item.values():
                links[op["operationId"]] = {"operationId": op["operationId"], "parameters": {"job_id": "$response.body#/id"}}


def _document(path: str, method: str, op: dict[str, Any]) -> None:
    ref = {"$ref": "#/components/schemas/" + ("OipError" if path.startswith("/v2") else "Error")}
    statuses = set(SPECIFIC.get((method, path), ()))
    if path not in OPEN:
        statuses |= {401, 422}
    if "{" in path:
        statuses |= {404, 422}
    statuses.add(405)
    responses = op.setdefault("responses", {})
    for status in sorted(statuses):
        entry: dict[str, Any] = {"description": REASONS[status], "content": {"application/json": {"schema": ref}}}
        if status == 405:
            entry["headers"] = {"Allow": {"description": "the methods this path answers", "schema": {"type": "string"}}}
        responses[str(status)] = entry
