"""GET /jobs/{id}/events: a job's Server-Sent Events. A client that disconnects mid-job and reconnects with
Last-Event-ID ends with exactly the sequence a client that stayed connected sees: status, progress, preview, completed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import TINY_SPEC, app_client, target_zip_bytes, wait_for


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with app_client(tmp_path, monkeypatch, checkpoint_every=5, preview_every=5) as c:
        yield c


def _read(client: TestClient, job_id: str, last: int | None = None, stop_after: int | None = None) -> list[tuple[int, str, dict]]:
    """Events as (id, kind, data); with ``stop_after``, hang up after that many (a client that goes away)."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    out: list[tuple[int, str, dict]] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if line == "":
                if "id" in fields:
                    out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                    if stop_after is not None and len(out) >= stop_after:
                        break
                fields = {}
            elif not line.startswith(":"):
                k, _, v = line.partition(": ")
                fields[k] = v
    return out


def test_a_reconnecting_client_sees_every_event_once(client: TestClient) -> None:
    spec = {**TINY_SPEC, "mining_steps": 10, "finetune_steps": 10}
    job = client.post("/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                      data={"spec": json.dumps(spec)}).json()
    first = _read(client, job["id"], stop_after=4)  # hangs up mid-job
    assert len(first) == 4 and first[0][1] == "status" and first[0][2]["status"] == "queued"
    assert first[0][2]["request_id"]  # the submitting request's X-Request-Id
    rest = _read(client, job["id"], last=first[-1][0])  # reconnects: Last-Event-ID
    whole = _read(client, job["id"])  # the job is over: a full replay from the start
    def same(events: list[tuple[int, str, dict]]) -> list[tuple[int, str, dict]]:  # preview URLs are signed at send time
        return [(i, k, {f: v for f, v in d.items() if f != "url"}) for i, k, d in events]

    assert same(first + rest) == same(whole)
    ids = [e[0] for e in whole]
    assert ids == sorted(set(ids))  # in order, none twice
    kinds = [k for _, k, _ in whole]
    assert kinds[-1] == "completed" and kinds.count("completed") == 1 and whole[-1][2]["status"] == "succeeded"
    assert {"status", "progress", "preview"} <= set(kinds)
    statuses = [d["status"] for _, k, d in whole if k == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    steps = [d["step"] for _, k, d in whole if k == "progress" and d["phase"] != "select"]
    assert steps == list(range(1, 21))  # every step of the job, in order
    preview = next(d for _, k, d in whole if k == "preview")
    assert client.get(preview["url"]).status_code == 200  # a link the client can fetch
    assert _read(client, job["id"], last=ids[-1]) == []  # nothing after the end: the stream closes at once
    assert wait_for(client, job["id"])["status"] == "succeeded"


def test_events_of_another_tenants_job_are_not_found(client: TestClient) -> None:
    assert client.get("/jobs/nope/events").status_code == 404


def test_a_job_that_finishes_between_the_two_reads_still_ends_with_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``follow`` reads the events, then the status. When the job finishes between those reads (its final status and
    completed event land in one transaction), the stream must still send completed, not stop before it."""
    import asyncio
    from types import SimpleNamespace

    from api.services import watch as ev

    log: list[tuple[int, str, dict]] = [(1, "status", {"status": "running"}), (2, "progress", {"step": 1})]
    state = {"status": "running", "reads": 0}

    def events_after(url: str, job_id: str, after: int) -> list[tuple[int, str, dict]]:
        state["reads"] += 1
        return [e for e in log if e[0] > after]

    def get_status(url: str, job_id: str) -> str:
        status = state["status"]
        if status == "running":  # the worker's finishing transaction commits right after the (empty) events read
            log.extend([(3, "status", {"status": "succeeded"}), (4, "completed", {"status": "succeeded"})])
            state["status"] = "succeeded"
            return "succeeded"
        return status

    monkeypatch.setattr(ev.jobs_dao, "events_after", events_after)
    monkeypatch.setattr(ev.jobs_dao, "get_status", get_status)
    monkeypatch.setattr(ev, "POLL_S", 0.0)
    svc = SimpleNamespace(settings=SimpleNamespace(database_url="sqlite://", presign_expiry_s=60), blobs=None)

    async def gone() -> bool:
        return False

    async def collect() -> list[tuple[int, str, dict] | None]:
        return [e async for e in ev.follow(svc, "j", 0, gone)]  # type: ignore[arg-type]

    got = asyncio.run(asyncio.wait_for(collect(), 10))
    assert [e[0] for e in got if e is not None] == [1, 2, 3, 4] and got[-1] is not None and got[-1][1] == "completed"
    # a stream that starts after the end reads once more, finds nothing past its last id, and closes
    assert asyncio.run(asyncio.wait_for(_after(ev, svc, 4, gone), 10)) == []


async def _after(ev, svc, last, gone):  # type: ignore[no-untyped-def]
    return [e async for e in ev.follow(svc, "j", last, gone)]
