"""Errors as ``{"error": {"code", "message"}}``: one handler maps the engine's and the API's error types."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.checkpoints import CheckpointError
from core.data import TargetDataError
from core.methods import MethodError
from core.zoo import UnknownModelError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    engine_errors: dict[type[Exception], tuple[int, str]] = {
        UnknownModelError: (422, "unknown_source"),
        MethodError: (422, "bad_spec"),
        CheckpointError: (422, "bad_checkpoint"),
    }
    @app.exception_handler(TargetDataError)
    async def _target(_: Request, exc: TargetDataError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status)

    for cls, (status, code) in engine_errors.items():
        def _make(status: int = status, code: str = code):  # type: ignore[no-untyped-def]
            async def handler(_: Request, exc: Exception) -> JSONResponse:
                return JSONResponse(error_body(code, str(exc)), status_code=status)
            return handler
        app.add_exception_handler(cls, _make())
