"""Readiness: the state of each dependency (database, broker, object store). Shared by ``/readyz``, ``/v2/health/ready``
and gRPC's health service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from api.services import Services
from store.db import engine_for


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
