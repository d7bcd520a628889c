"""The sampling fast path (api/fastpath.py) answers exactly as the FastAPI routes do, only from the caches,
and leaves everything else (errors, first requests, other tenants' jobs, keys to verify) to the routes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store import auth as keys_dao
from store.settings import Settings
from tests.helpers import TINY_SPEC, target_zip_bytes, wait_for, write_tiny_zoo

HEADERS = ("content-type", "content-length", "x-job-id", "x-seed", "content-disposition")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], str]]:
    write_tiny_zoo(tmp_path / "zoo")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", tmp_path / "zoo")
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=2, auth="required",
                        auth_cache_s=300, sample_max_n=100)
    with TestClient(create_app(settings)) as c:
        keys = {t: {"Authorization": "Bearer " + keys_dao.create_key(settings.database_url, t, "test", None)[0]}
                for t in ("alice", "bob")}
        job = c.post("/jobs", headers=keys["alice"], files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                     data={"spec": json.dumps(TINY_SPEC)}).json()
        assert wait_for(c, job["id"], headers=keys["alice"])["status"] == "succeeded"
        deadline = time.monotonic() + 60
        while not c.app.state.worker.idle() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.02)  # the worker tells this process's caches the job ended; a test's cache counts start after
        yield c, keys, job["id"]


def _answer(c: TestClient, url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str | None]]:
    r = c.get(url, headers=headers)
    return r.status_code, r.content, {h: r.headers.get(h) for h in HEADERS}


def test_fast_path_answers_byte_for_byte_as_the_routes(env) -> None:  # type: ignore[no-untyped-def]
    c, keys, job_id = env
    svc = c.app.state.services
    alice = keys["alice"]
    assert c.get("/sample?n=4", headers=alice).status_code == 200  # through the route: fills the caches
    urls = [
        "/sample", "/sample?n=16", "/sample?n=16&seed=7", "/sample?n=3&format=zip&seed=2", f"/sample?job={job_id}&n=5",
        f"/jobs/{job_id}/sample?n=16&seed=123", f"/jobs/{job_id}/sample?format=zip&n=2",
        # not the fast path's to answer: the routes' errors must come out unchanged
        "/sample?n=0", "/sample?n=257", "/sample?n=101", "/sample?n=abc", "/sample?n=16&n=4", "/sample?seed=-1",
        "/sample?format=gif", "/sample?colour=red",  # FastAPI ignores an unknown parameter; the fast path defers
        f"/jobs/{job_id}x/sample", "/sample?job=nope",
        "/sample?n=%31%36",
    ]
    fast = {u: _answer(c, u, alice) for u in urls}
    hits = svc.fast_path_hits
    svc.settings.sample_fast_path = False
    try:
        slow = {u: _answer(c, u, alice) for u in urls}
    finally:
        svc.settings.sample_fast_path = True
    assert svc.fast_path_hits == hits  # switched off, it answered nothing
    for u in urls:
        assert fast[u] == slow[u], u
    assert [fast[u][0] for u in urls[7:]] == [422, 422, 422, 422, 200, 422, 422, 200, 404, 404, 200]
    # the seven valid requests plus "/sample?n=%31%36" (n=16, percent-encoded) came from the caches
    assert hits == 8


def test_fast_path_needs_no_database_once_the_caches_are_warm(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    c, keys, job_id = env
    svc = c.app.state.services
    assert c.get(f"/jobs/{job_id}/sample?n=4", headers=keys["alice"]).status_code == 200
    assert c.get("/sample?n=4", headers=keys["alice"]).status_code == 200

    def down(*a: object, **k: object) -> None:
        raise RuntimeError("database down")

    for name in ("get", "latest_model"):
        monkeypatch.setattr(f"store.jobs.{name}", down)
    monkeypatch.setattr("store.auth.verify", down)
    before = svc.fast_path_hits
    assert c.get("/sample?n=8&seed=3", headers=keys["alice"]).status_code == 200
    assert c.get(f"/jobs/{job_id}/sample?n=8", headers=keys["alice"]).status_code == 200
    assert svc.fast_path_hits == before + 2 and svc.models.loads == 1


def test_fast_path_never_serves_another_tenant_or_a_missing_key(env) -> None:  # type: ignore[no-untyped-def]
    c, keys, job_id = env
    svc = c.app.state.services
    assert c.get(f"/jobs/{job_id}/sample?n=4", headers=keys["alice"]).status_code == 200  # alice's job is cached now
    assert c.get("/jobs", headers=keys["bob"]).status_code == 200  # bob's key is verified and cached too
    before = svc.fast_path_hits
    r = c.get(f"/jobs/{job_id}/sample?n=4", headers=keys["bob"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    assert c.get(f"/sample?job={job_id}", headers=keys["bob"]).status_code == 404
    assert c.get("/sample", headers=keys["bob"]).status_code == 404  # bob has no finished job
    r = c.get(f"/jobs/{job_id}/sample?n=4")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert svc.fast_path_hits == before


def test_torch_work_of_the_api_runs_on_the_loop_and_one_single_threaded_helper(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Only one thread may own an OpenMP team (api/compute.py): renders run on the event-loop thread; model loads
    and the target grid on one helper thread whose torch is single-threaded; uploaded zips are decoded in the checker
    process, not in this one (tests/api/test_compute.py checks that process)."""
    import threading

    import api.routes.jobs
    import api.services.sampling
    import api.uploads
    from api.compute import torch_helper_ident, torch_threads_of_helper

    c, keys, job_id = env
    seen: dict[str, set[int]] = {}

    def spy(module: object, name: str, label: str) -> None:
        real = getattr(module, name)

        def wrapped(*a: object, **k: object) -> object:
            seen.setdefault(label, set()).add(threading.get_ident())
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapped)

    spy(api.uploads, "load_target_bytes", "upload")
    spy(api.routes.jobs, "load_target_bytes", "target")
    spy(api.routes.jobs, "grid_png", "target grid")
    spy(api.services.sampling, "grid_png", "render")
    spy(c.app.state.services.models, "get", "model load")
    c.app.state.services.models._items.clear()  # the next request loads the model again
    assert c.post("/jobs", headers=keys["alice"], files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                  data={"spec": json.dumps(TINY_SPEC)}).status_code == 202
    assert c.get(f"/jobs/{job_id}/target.png", headers=keys["alice"]).status_code == 200
    loop_ident = c.portal.call(threading.get_ident)  # the TestClient's event-loop thread
    for _ in range(2):  # a load through the route, then a cached render through the fast path
        assert c.get(f"/jobs/{job_id}/sample?n=4", headers=keys["alice"]).status_code == 200
    helper = torch_helper_ident()
    assert set(seen) == {"target", "target grid", "render", "model load"}  # no "upload": decoded in the checker process
    assert all(seen[k] == {helper} for k in ("target", "target grid", "model load")), seen
    assert seen["render"] == {loop_ident} != {helper}
    seen.clear()  # a result larger than one piece (100 x 784 > CHUNK_VALUES) is encoded off the loop
    assert c.get(f"/jobs/{job_id}/sample?n=100", headers=keys["alice"]).status_code == 200
    assert seen == {"render": {helper}}
    assert torch_threads_of_helper() == 1
