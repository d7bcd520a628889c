"""Liveness and readiness (database, broker, storage)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import ServicesDep
from api.services import Services
from store.db import engine_for

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(svc: ServicesDep) -> JSONResponse:
    checks = readiness(svc)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


def readiness(svc: Services) -> dict[str, Any]:
    """Each dependency's state, "ok" or the error (blocking: the database, the broker and the object store are asked)."""
    checks: dict[str, Any] = {}
    for name, fn in (("database", lambda: _db(svc.settings.database_url)), ("broker", svc.check_broker),
                     ("storage", svc.blobs.check)):
        try:
            fn()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; report it
            checks[name] = f"error: {exc}"
    return checks


def _db(url: str) -> None:
    with engine_for(url).connect() as conn:
        conn.execute(text("SELECT 1"))
