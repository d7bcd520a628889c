"""/metrics parses with prometheus_client's own parser and shows a finished job: its status and method, its run time
and queue wait, request latency by route, sampling latency, model-cache misses then hits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TINY_SPEC, app_client, target_zip_bytes, wait_for


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with app_client(tmp_path, monkeypatch) as c:
        yield c


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_show_a_finished_job(client: TestClient) -> None:
    before = _samples(client)
    job = client.post("/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                      data={"spec": json.dumps(TINY_SPEC)}).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    for _ in range(2):
        assert client.get(f"/jobs/{job['id']}/sample?n=4").status_code == 200
    m = _samples(client)
    assert m[("minegan_jobs", (("method", "minegan++"), ("status", "succeeded")))] == 1
    assert m[("minegan_job_run_seconds_count", (("status", "succeeded"),))] == 1
    assert m[("minegan_job_run_seconds_sum", (("status", "succeeded"),))] > 0
    assert m[("minegan_job_queue_wait_seconds_count", ())] == 1
    posted = (("method", "POST"), ("route", "/jobs"), ("status", "202"))
    assert m[("minegan_http_request_duration_seconds_count", posted)] - before.get(("minegan_http_request_duration_seconds_count", posted), 0) == 1
    sampled = (("method", "GET"), ("route", "/jobs/{job_id}/sample"), ("status", "200"))
    assert m[("minegan_http_request_duration_seconds_count", sampled)] >= 2
    assert m[("minegan_sample_seconds_count", (("protocol", "rest"),))] >= 2
    hits = m[("minegan_model_cache_total", (("result", "hit"),))] - before.get(("minegan_model_cache_total", (("result", "hit"),)), 0)
    misses = m[("minegan_model_cache_total", (("result", "miss"),))] - before.get(("minegan_model_cache_total", (("result", "miss"),)), 0)
    assert misses == 1 and hits >= 1  # loaded once, then served from memory
