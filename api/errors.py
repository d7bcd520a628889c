"""Errors as ``{"error": {"code", "message"}}``: one handler maps the engine's and the API's error types."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.checkpoints import CheckpointError
from core.data import TargetDataError
from core.formats import ModelFormatError
from core.options import MethodError
from core.zoo import UnknownModelError

# The engine's errors a request can cause; each class carries its HTTP status and error code.
ENGINE_ERRORS: tuple[type[Exception], ...] = (UnknownModelError, MethodError, CheckpointError, TargetDataError, ModelFormatError)

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def describe_errors(errors: Iterable[Mapping[str, Any]], whole: str = "") -> str:
    """pydantic's validation errors as one message: "field.path: what is wrong; ...". An error of the whole
    value (no field) is prefixed with ``whole`` if given."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path")) or whole
        # a form part that is absent and one that is empty both arrive as "missing": say so, the same way for both
        empty = e.get("type") == "string_too_short" and (e.get("ctx") or {}).get("min_length") == 1
        msg = "is required and was missing or empty" if e.get("type") == "missing" or empty else e.get("msg")
        parts.append(f"{loc}: {msg}" if loc else str(msg))
    return "; ".join(parts)


def error_response(request: Request, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"error": {"code", "message"}}``; under ``/v2/`` the Open Inference Protocol's own ``{"error": message}``,
    which its clients (tritonclient, KServe) read."""
    if request.url.path.startswith("/v2/") or request.url.path == "/v2":
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _allowed(request: Request) -> list[str]:
    """Every method some route of this path answers (asked of the routes themselves, so included routers count)."""
    methods = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            methods.append(method)
    return methods


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_request", describe_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route of the path; Allow lists every method it has
            headers["Allow"] = ", ".join(_allowed(request))
        return error_response(request, exc.status_code, code, str(exc.detail), headers)

    async def _engine(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc.status, exc.code, str(exc))  # type: ignore[attr-defined]

    for cls in ENGINE_ERRORS:
        app.add_exception_handler(cls, _engine)
