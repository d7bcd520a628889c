"""The hostile-upload corpus (tests/hostile.py) over HTTP against the embedded app: every case gets its
status and error code, nothing is stored for a refused upload, no temporary file is left, and the
server keeps serving. tests/integration/test_hardening.py runs the same corpus against the real stack."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store.settings import Settings
from tests import hostile
from tests.helpers import TINY_SPEC, wait_for, write_tiny_zoo

LIMITS = hostile.Limits(max_upload_bytes=2 << 20, max_request_bytes=4 << 20, max_target_images=50, max_zip_entries=100)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    write_tiny_zoo(tmp_path / "zoo")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", tmp_path / "zoo")
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where Starlette spools multipart files
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "blobs"),
                        work_dir=str(tmp_path / "work"), progress_interval_s=0, checkpoint_every=2,
                        **{k: v for k, v in LIMITS.__dict__.items()})
    with TestClient(create_app(settings)) as c:
        yield c


def test_every_hostile_upload_gets_its_error_and_nothing_is_kept(client: TestClient, tmp_path: Path) -> None:
    accepted = []
    for case in hostile.corpus():
        r = hostile.send(client, case, TINY_SPEC, LIMITS)
        hostile.check(case, r)
        if r.status_code == 202:
            accepted.append(r.json()["id"])
            client.post(f"/jobs/{r.json()['id']}/cancel")
    assert len(accepted) == 1
    jobs = client.get("/jobs?limit=100").json()
    assert [j["id"] for j in jobs["items"]] == accepted  # no job row for any refused upload
    uploads = sorted(p.name for p in (tmp_path / "blobs" / "uploads").iterdir())
    assert uploads == [f"{accepted[0]}.zip"]  # and no stored upload
    assert list((tmp_path / "spool").iterdir()) == []  # no spooled temporary file left behind
    # still serving: a normal job runs to the end
    r = client.post("/jobs", files={"images": ("t.zip", hostile.zip_of(hostile.good_images()), "application/zip")},
                    data={"spec": __import__("json").dumps(TINY_SPEC)})
    assert r.status_code == 202 and wait_for(client, r.json()["id"])["status"] == "succeeded"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("corpus", [hostile.corpus, hostile.request_corpus], ids=["uploads", "requests"])
def test_docs_table_matches_the_corpus(corpus: Any) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "hostile_uploads.md").read_text()
    for case in corpus():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {case.name} |")), None)
        assert row is not None, f"docs/hostile_uploads.md lacks a row for {case.name!r}"
        assert f"| {case.status} |" in row and (case.code is None or f"`{case.code}`" in row), row


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The embedded app with API keys required (one for the module: each case leaves it serving)."""
    from store import auth as keys_dao

    tmp = tmp_path_factory.mktemp("keyed")
    write_tiny_zoo(tmp / "zoo")
    settings = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=str(tmp / "blobs"), work_dir=str(tmp / "work"),
                        auth="required", auth_cache_s=0, **{k: v for k, v in LIMITS.__dict__.items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("core.zoo.WEIGHTS_DIR", tmp / "zoo")
        with TestClient(create_app(settings)) as c:
            key, _ = keys_dao.create_key(settings.database_url, "alice", "test")
            yield c, {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("case", hostile.request_corpus(), ids=lambda case: case.name)
def test_each_pressure_or_malformed_request_gets_its_4xx(keyed: tuple[TestClient, dict[str, str]], case: hostile.RequestCase) -> None:
    c, key = keyed
    hostile.check_request(case, case.send(c, key))
    assert c.get("/healthz").status_code == 200


