"""A small Python client for the MineGAN service (used by ``minegan submit/jobs/status/cancel/sample``).

    from client import Client
    c = Client("http://127.0.0.1:8000", api_key="mg_...")      # or MINEGAN_URL / MINEGAN_API_KEY
    job = c.submit("nines.zip", sources=["mnist-no-9"], method="minegan++")
    job = c.wait(job["id"], on_update=lambda j: print(j["status"], j["progress"]))
    open("grid.png", "wb").write(c.sample(job["id"], n=16))

Every non-2xx answer raises :class:`ApiError` with the service's ``code`` and ``message``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("MINEGAN_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key if api_key is not None else os.environ.get("MINEGAN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url} ({exc}); is `minegan serve` running?") from exc
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ApiError(r.status_code, err.get("code", "error"), err.get("message", r.text))
            except (ValueError, KeyError, TypeError):
                raise ApiError(r.status_code, "http_error", r.text[:300]) from None
        return r

    def submit(self, images: str | Path | bytes, sources: list[str], method: str | None = None, mining_steps: int | None = None,
               finetune_steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
               options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upload the target zip and start a job. Only what the caller gives is sent: the server's defaults (GET /models
        lists them per source, ``job_defaults``) apply to the rest."""
        data = images if isinstance(images, bytes) else Path(images).read_bytes()
        given = {"method": method, "mining_steps": mining_steps, "finetune_steps": finetune_steps, "batch_size": batch_size,
                 "seed": seed, "options": options or None}
        spec = {"sources": sources, **{k: v for k, v in given.items() if v is not None}}
        r = self._call("POST", "/jobs", files={"images": ("target.zip", data, "application/zip")}, data={"spec": json.dumps(spec)})
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def jobs(self, limit: int = 20, offset: int = 0, status: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset} | ({"status": status} if status else {})
        return self._call("GET", "/jobs", params=params).json()  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/jobs/{job_id}/cancel").json()  # type: ignore[no-any-return]

    def sample(self, job_id: str | None = None, n: int = 16, seed: int = 0, format: str = "png") -> bytes:
        path = f"/jobs/{job_id}/sample" if job_id else "/sample"
        return self._call("GET", path, params={"n": n, "seed": seed, "format": format}).content

    def export(self, job_id: str, format: str = "pt2") -> bytes:
        """The job's whole sampler as one file (core/export.py): ``pt2`` or ``onnx``."""
        return self._call("GET", f"/jobs/{job_id}/export", params={"format": format}).content

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/jobs/{job_id}/artifacts").json()  # type: ignore[no-any-return]

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/models").json()  # type: ignore[no-any-return]

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job reaches succeeded/failed/canceled; ``on_update`` sees every poll's job."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)
