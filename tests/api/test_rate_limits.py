"""Issue 35: one tenant's request volume. With API keys required each tenant has a request rate and an upload rate
(api/limits.py, TenantRates); past either it gets 429 with Retry-After before its body is read, over REST, /v2 and
gRPC, and another tenant is not affected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from store import auth as keys_dao
from tests.helpers import TINY_SPEC, app_client, embedded_server, free_port, target_zip_bytes


def _keys(c: TestClient, *tenants: str) -> list[dict[str, str]]:
    url = c.app.state.services.settings.database_url  # type: ignore[attr-defined]
    return [{"Authorization": f"Bearer {keys_dao.create_key(url, t, 'test', 4)[0]}"} for t in tenants]


def _upload(c: TestClient, key: dict[str, str]) -> int:
    files = {"images": ("t.zip", target_zip_bytes(), "application/zip")}
    return c.post("/jobs", headers=key, files=files, data={"spec": json.dumps({**TINY_SPEC, "batch_size": 9999})}).status_code


def test_a_tenant_past_its_upload_rate_gets_429_before_its_body_is_read_and_another_tenant_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with app_client(tmp_path, monkeypatch, auth="required", upload_rate_limit="2/minute", rate_limit="",
                    rate_limit_delay_s=0) as c:
        alice, bob = _keys(c, "alice", "bob")
        assert [_upload(c, alice), _upload(c, alice)] == [422, 422]  # checked, then refused for its batch size
        read: list[int] = []

        def body() -> Iterator[bytes]:
            for _ in range(64):
                read.append(1)
                yield b"x" * 65536

        r = c.post("/jobs", headers={**alice, "Content-Type": "multipart/form-data; boundary=x"}, content=body())
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert "more than 2 uploads per 1 minute" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["connection"] == "close"
        assert len(read) <= 2  # the answer came before the body
        assert c.post("/models", headers=alice, files={"generator": ("g", b"x")}).status_code == 429  # uploads both ways
        assert c.get("/jobs", headers=alice).status_code == 200  # other requests go on
        assert _upload(c, bob) == 422  # bob's uploads have their own count


def test_a_tenant_past_its_request_rate_gets_429_over_rest_and_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with app_client(tmp_path, monkeypatch, auth="required", rate_limit="5/minute", rate_limit_delay_s=0) as c:
        alice, bob = _keys(c, "alice", "bob")
        codes = [c.get("/jobs", headers=alice).status_code for _ in range(5)]
        assert codes == [200] * 5
        over = c.get("/jobs", headers=alice)
        assert over.status_code == 429 and "more than 5 requests per 1 minute" in over.json()["error"]["message"]
        assert c.get("/sample?n=1", headers=alice).status_code == 429  # the fast path is behind the limit too
        assert c.post("/v2/models/latest/infer", headers=alice, content=b"{}").json()["error"].startswith("tenant 'alice'")
        assert c.get("/healthz").status_code == 200  # the open paths are not counted
        assert c.get("/jobs", headers=bob).status_code == 200


def test_a_refused_request_is_answered_after_the_delay_and_holds_no_one_else_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that ignores Retry-After waits ``rate_limit_delay_s`` for each refusal; the event loop goes on meanwhile."""
    import threading
    import time

    with app_client(tmp_path, monkeypatch, auth="required", rate_limit="1/minute", rate_limit_delay_s=1.0) as c:
        alice, bob = _keys(c, "alice", "bob")
        assert c.get("/jobs", headers=alice).status_code == 200
        refused: list[tuple[int, float]] = []

        def hammer() -> None:
            t0 = time.perf_counter()
            refused.append((c.get("/jobs", headers=alice).status_code, time.perf_counter() - t0))

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        assert c.get("/jobs", headers=bob).status_code == 200  # while alice's refusal is held back
        assert time.perf_counter() - t0 < 0.6 and thread.is_alive()
        thread.join()
        assert refused[0][0] == 429 and 0.95 <= refused[0][1] < 5


def test_without_keys_there_is_no_rate_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with app_client(tmp_path, monkeypatch, auth="off", rate_limit="2/minute") as c:
        assert [c.get("/jobs").status_code for _ in range(4)] == [200] * 4


def test_grpc_submit_counts_as_an_upload(tmp_path: Path) -> None:
    """Against ``minegan serve --grpc-port`` in a subprocess: the gRPC server's protobuf package is the one tritonclient
    declares, and other tests load tritonclient into this process."""
    import subprocess
    import sys

    import grpc

    from minegan_grpc import jobs_pb2, jobs_pb2_grpc

    port = free_port()
    env = {"MINEGAN_AUTH": "required", "MINEGAN_GRPC_PORT": str(port), "MINEGAN_UPLOAD_RATE_LIMIT": "1/minute",
           "MINEGAN_RATE_LIMIT_DELAY_S": "0"}
    with embedded_server(tmp_path, **env) as (_, full_env):
        key = subprocess.run([str(Path(sys.executable).parent / "minegan"), "keys", "create", "--tenant", "alice"], env=full_env,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        meta = (("authorization", f"Bearer {key}"),)

        def parts() -> Iterator[jobs_pb2.SubmitRequest]:
            yield jobs_pb2.SubmitRequest(spec_json=json.dumps({**TINY_SPEC, "batch_size": 9999}))
            yield jobs_pb2.SubmitRequest(zip_chunk=target_zip_bytes())

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            jobs = jobs_pb2_grpc.JobsStub(ch)
            codes = []
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as err:
                    jobs.Submit(parts(), metadata=meta, timeout=30)
                codes.append(err.value.code())
            assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert "more than 1 uploads per 1 minute" in (err.value.details() or "")
            assert dict(err.value.trailing_metadata() or ())["retry-after"].isdigit()


def test_a_rate_that_does_not_parse_is_refused_with_its_setting_named() -> None:
    from pydantic import ValidationError

    from store.settings import Settings

    with pytest.raises(ValidationError, match="upload_rate_limit") as err:
        Settings(upload_rate_limit="lots")
    assert "'lots' is not a rate such as '100/second'" in str(err.value)
    assert Settings(rate_limit="5/second;100/minute", upload_rate_limit="").rate_limit == "5/second;100/minute"

