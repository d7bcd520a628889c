"""The per-tenant job quota holds under concurrency: 20 submissions at once with a limit of 2 give exactly two 202s
and eighteen 429s, on SQLite (embedded server) and on PostgreSQL (tests/integration/test_hardening.py)."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers import TINY_SPEC, embedded_server, target_zip_bytes


def concurrent_submissions(url: str, headers: dict[str, str], n: int = 20, spec: dict | None = None,  # type: ignore[type-arg]
                           data: bytes | None = None) -> Counter[int]:
    data = data or target_zip_bytes()
    raw = json.dumps({**(spec or TINY_SPEC), "mining_steps": 100_000})  # jobs that stay active

    def one(_: int) -> int:
        r = httpx.post(f"{url}/jobs", files={"images": ("t.zip", data, "application/zip")}, data={"spec": raw}, headers=headers,
                       timeout=60)
        assert r.status_code in (202, 429), r.text
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "too_many_jobs"
        return r.status_code

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def test_twenty_concurrent_submissions_with_a_limit_of_two_on_sqlite(tmp_path: Path) -> None:
    with embedded_server(tmp_path, MINEGAN_MAX_CONCURRENT_JOBS="2", MINEGAN_MAX_WAITING_CHECKS="20") as (url, _):
        assert concurrent_submissions(url, {}) == Counter({202: 2, 429: 18})
        jobs = httpx.get(f"{url}/jobs?limit=100").json()
        assert jobs["total"] == 2
        uploads = sorted(p.name for p in (tmp_path / "blobs" / "uploads").iterdir())
        assert uploads == sorted(f"{j['id']}.zip" for j in jobs["items"])  # refused submissions keep no upload
        for j in jobs["items"]:
            httpx.post(f"{url}/jobs/{j['id']}/cancel")
