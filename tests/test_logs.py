"""Structured logs: `minegan serve` writes one JSON object per line; a job's records in the worker carry its id, its
tenant and the id of the request that submitted it, which the caller got back as X-Request-Id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.helpers import TINY_SPEC, embedded_server, target_zip_bytes, wait_for


def test_json_logs_carry_the_request_and_the_job(tmp_path: Path) -> None:
    with embedded_server(tmp_path) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as c:  # the upload check runs at low priority: seconds on a busy machine
            r = c.post("/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                       data={"spec": json.dumps(TINY_SPEC)}, headers={"X-Request-Id": "req-42"})
            assert r.status_code == 202 and r.headers["x-request-id"] == "req-42"
            job_id = r.json()["id"]
            assert wait_for(c, job_id)["status"] == "succeeded"
            fresh = c.get("/healthz").headers["x-request-id"]
            assert len(fresh) == 32 and fresh != "req-42"  # one is made up when the caller sends none
            assert c.get("/healthz", headers={"X-Request-Id": "bad id\\n"}).headers["x-request-id"] != "bad id\\n"
        time.sleep(0.5)
    text = (tmp_path / "log").read_text()
    # every line is one JSON object; at exit, multiprocessing's resource-tracker process (which runs none of our code)
    # may print its own warning
    lines = [line for line in text.splitlines() if line.strip() and "resource_tracker" not in line and not line.startswith("  ")]
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    done = [r for r in records if "succeeded" in r["message"] and r.get("job_id") == job_id]
    assert done and done[0]["request_id"] == "req-42" and done[0]["tenant"] == "default"  # from the worker's child process
