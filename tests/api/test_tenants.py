"""API keys and tenant isolation over HTTP (embedded app with ``auth=required``): keys are hashed at rest,
every route answers another tenant's ids with 404, artifact links are signed and expire, and each tenant
has a limit on concurrent jobs. tests/integration/test_hardening.py repeats the isolation on the real stack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from api.main import create_app
from store import auth as keys_dao
from store import sources as registry
from store.settings import Settings
from tests.helpers import TINY_SPEC, target_zip_bytes, write_tiny_zoo


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], Settings]]:
    zoo_file = write_tiny_zoo(tmp_path / "zoo")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", tmp_path / "zoo")
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=2, auth="required",
                        auth_cache_s=0, presign_expiry_s=10)
    with TestClient(create_app(settings)) as c:
        keys = {}
        for tenant, max_jobs in (("alice", None), ("bob", 1)):
            key, _ = keys_dao.create_key(settings.database_url, tenant, "test", max_jobs)
            keys[tenant] = {"Authorization": f"Bearer {key}"}
        registry.register(c.app.state.services.blobs, "alice", "alice-private", zoo_file.read_bytes(), origin="test")
        yield c, keys, settings


def _submit(c: TestClient, headers: dict[str, str], spec: dict | None = None):  # type: ignore[no-untyped-def]
    return c.post("/jobs", headers=headers, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                  data={"spec": json.dumps(spec or TINY_SPEC)})


def test_keys_are_required_and_hashed_at_rest(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, keys, settings = env
    r = c.get("/jobs")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized" and "minegan keys create" in r.json()["error"]["message"]
    assert c.get("/jobs", headers={"Authorization": "Bearer mg_00000000_notavalidkeynotavalidkey"}).status_code == 401
    assert c.get("/jobs", headers={"X-API-Key": keys["alice"]["Authorization"][7:]}).status_code == 200
    assert c.get("/healthz").status_code == 200  # probes stay open
    raw = keys["alice"]["Authorization"][7:]
    with sqlalchemy.create_engine(settings.database_url).connect() as conn:
        rows = [tuple(r) for r in conn.execute(sqlalchemy.text("select * from api_keys"))]
    assert len(rows) == 2 and not any(raw in str(v) for row in rows for v in row)
    key_id = raw.split("_")[1]
    assert keys_dao.revoke(settings.database_url, key_id)
    assert c.get("/jobs", headers=keys["alice"]).status_code == 401  # auth_cache_s=0: revocation is immediate


def test_every_route_hides_other_tenants_data(env) -> None:  # type: ignore[no-untyped-def]
    c, keys, _ = env
    a, b = keys["alice"], keys["bob"]
    job = wait_for_h(c, _submit(c, a, {**TINY_SPEC, "sources": ["alice-private"]}).json()["id"], a)
    assert job["status"] == "succeeded", job
    jid = job["id"]
    arts = c.get(f"/jobs/{jid}/artifacts", headers=a).json()
    url = next(x["url"] for x in arts if x["name"] == "samples.png")
    assert c.get(url).status_code == 200  # the owner's signed link works (no key needed: it is the credential)

    for method, path, body in [("GET", f"/jobs/{jid}", None), ("POST", f"/jobs/{jid}/cancel", None),
                               ("GET", f"/jobs/{jid}/sample?n=4", None), ("GET", f"/sample?job={jid}", None),
                               ("GET", "/sample", None), ("GET", f"/jobs/{jid}/artifacts", None),
                               ("POST", "/models", {"id": "stolen", "job_id": jid})]:
        r = c.request(method, path, headers=b, json=body)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("job_not_found", "not_found"), r.text
    assert c.get("/jobs", headers=b).json()["total"] == 0
    assert "alice-private" in {m["id"] for m in c.get("/models", headers=a).json()}
    assert "alice-private" not in {m["id"] for m in c.get("/models", headers=b).json()}
    r = _submit(c, b, {**TINY_SPEC, "sources": ["alice-private"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_source"

    # a signed link cannot be edited to reach another artifact, and it expires
    other = url.replace("samples.png", "model.pt")
    assert c.get(other).status_code == 404
    assert c.get(url.split("?")[0]).status_code == 404
    time.sleep(11)
    assert c.get(url).status_code == 404


def wait_for_h(c: TestClient, job_id: str, headers: dict[str, str], until: tuple[str, ...] = ("succeeded", "failed", "canceled")) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        body = c.get(f"/jobs/{job_id}", headers=headers).json()
        if body["status"] in until:
            return body  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(body)


def test_concurrent_job_limit_per_tenant(env) -> None:  # type: ignore[no-untyped-def]
    c, keys, _ = env
    b = keys["bob"]  # limit 1
    first = _submit(c, b, {**TINY_SPEC, "mining_steps": 5000, "finetune_steps": 0}).json()
    r = _submit(c, b)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs" and "limit is 1" in r.json()["error"]["message"]
    assert _submit(c, keys["alice"]).status_code == 202  # other tenants are not affected
    c.post(f"/jobs/{first['id']}/cancel", headers=b)
    wait_for_h(c, first["id"], b)
    assert _submit(c, b).status_code == 202
