"""Signed webhooks from an outbox: a local receiver that answers 500 to the first try of every event still gets each
event exactly once with a valid HMAC-SHA256 signature, completed among them; internal or plain-http URLs are refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import TINY_SPEC, Receiver, app_client, target_zip_bytes, wait_for


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with app_client(tmp_path, monkeypatch, webhook_allow="127.0.0.1") as c:
        yield c


def _submit(client: TestClient, **extra: object):  # type: ignore[no-untyped-def]
    return client.post("/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                       data={"spec": json.dumps({**TINY_SPEC, **extra})})


def test_each_event_arrives_once_signed_even_after_a_500(client: TestClient) -> None:
    rx = Receiver()
    secret = client.get("/webhooks/secret").json()["secret"]
    job = _submit(client, webhook=f"http://127.0.0.1:{rx.port}/hook", webhook_events=["status", "completed"]).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    deadline = time.time() + 30
    while not any(json.loads(b)["type"] == "completed" for _, b in rx.accepted()):
        assert time.time() < deadline, rx.tries
        time.sleep(0.2)
    time.sleep(1.0)  # nothing more may come
    accepted = rx.accepted()
    for h, body in accepted:
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(h["X-Minegan-Signature"], want)
        assert json.loads(body)["id"] == int(h["X-Minegan-Event-Id"]) and json.loads(body)["job_id"] == job["id"]
    events = [json.loads(b) for _, b in accepted]
    assert [e["type"] for e in events].count("completed") == 1 and events[-1]["data"]["status"] == "succeeded"
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "succeeded"]
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))  # each event accepted once
    per_event = {i: [s for h, _, s in rx.tries if int(h["X-Minegan-Event-Id"]) == i] for i in ids}
    assert all(v == [500, 200] for v in per_event.values()), per_event  # every first try failed and was retried once
    rx.server.shutdown()


@pytest.mark.parametrize("url,why", [
    ("https://10.1.2.3/hook", "internal address"),
    ("https://169.254.169.254/latest/meta-data", "internal address"),
    ("https://localhost/hook", "internal address"),
    ("http://example.com/hook", "only https"),
    ("ftp://example.com/hook", "not an http"),
])
def test_webhook_urls_that_could_reach_inside_are_refused(client: TestClient, url: str, why: str) -> None:
    r = _submit(client, webhook=url)
    assert r.status_code == 422 and why in r.json()["error"]["message"], r.text
    assert client.get("/jobs").json()["total"] == 0  # nothing stored
