"""Structured logs: one JSON object per line, carrying the request id, the tenant and the job id of the work at hand.

The three are context variables: the API sets the request id (``X-Request-Id``, echoed to the caller) and the tenant
for each request, and the job id where a request names or creates one; a worker sets the job id, its tenant and the
id of the request that submitted it (recorded with the job's first event) while it runs the job. Every log record
emitted meanwhile, by any module, carries them. ``MINEGAN_LOG_FORMAT=text`` gives plain lines instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
FIELDS = {"request_id": request_id, "tenant": tenant, "job_id": job_id}
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(given: str | None = None) -> str:
    """The caller's X-Request-Id when it is a sane token, else a fresh one."""
    return given if given and _SAFE_ID.match(given) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        out |= {k: v.get() for k, v in FIELDS.items() if v.get() is not None}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(fmt: str = "json", level: int = logging.INFO) -> None:
    """Route every logger (uvicorn's and Celery's too) through one handler on stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings become records too
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Set context fields (request_id, tenant, job_id) for the block."""
    tokens = [(FIELDS[k], FIELDS[k].set(v)) for k, v in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
