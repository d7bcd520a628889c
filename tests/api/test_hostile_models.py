"""Hostile and broken model files to POST /models (tests/hostile.py, model_corpus): each gets its 4xx with a
message naming the problem, nothing is stored, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests import hostile
from tests.helpers import app_client


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with app_client(tmp_path, monkeypatch) as c:
        yield c


def test_every_hostile_model_file_gets_its_error_and_nothing_is_stored(client: TestClient, tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    before = client.get("/models").json()
    for case in hostile.model_corpus():
        hostile.check_model(case, hostile.send_model(client, case))
    assert client.get("/models").json() == before
    assert not list((tmp_path / "blobs").rglob("*.pt"))  # no model file kept
    assert "this must never run" not in capfd.readouterr().out
    good, cfg = hostile.onnx_generator(), dict(hostile.ONNX_CFG, id="fine")
    r = client.post("/models", files={"generator": ("g.onnx", good, "application/octet-stream")}, data={"config": __import__("json").dumps(cfg)})
    assert r.status_code == 201, r.text
    assert r.json()["critic"] is False and r.json()["z_dim"] == 8
    defaults = r.json()["job_defaults"]  # a generator-only source: fresh critic, G_ema, the best candidate published
    assert (defaults["critic_init"], defaults["keep_best"], defaults["g_ema"] > 0) == ("fresh", "on", True)


def test_docs_table_matches_the_model_corpus() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "hostile_uploads.md").read_text()
    for case in hostile.model_corpus():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {case.name} |")), None)
        assert row is not None, f"docs/hostile_uploads.md lacks a row for {case.name!r}"
        assert f"| {case.status} |" in row and f"`{case.code}`" in row, row
