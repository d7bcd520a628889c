"""Issue 35: what a caller without a key could still do, and inputs that gave a 500. Each case is a finding of an
outside probe; each now gets its 4xx (the embedded app with API keys required)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from store import auth as keys_dao
from store import webhooks
from tests.helpers import app_client, target_zip_bytes


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with app_client(tmp_path, monkeypatch, auth="required", auth_cache_s=0) as c:
        key, _ = keys_dao.create_key(c.app.state.services.settings.database_url, "alice", "test", 4)  # type: ignore[attr-defined]
        yield c, {"Authorization": f"Bearer {key}"}


def test_a_request_without_a_key_is_refused_before_its_body_is_read(env: tuple[TestClient, dict[str, str]]) -> None:
    c, _ = env
    read: list[int] = []

    def body() -> Iterator[bytes]:  # a stalled upload would never end: the server must not wait for it
        for _ in range(64):
            read.append(1)
            yield b"x" * 65536

    r = c.post("/jobs", content=body(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["connection"] == "close" and r.headers["www-authenticate"] == "Bearer"
    assert len(read) <= 2  # the client's first piece at most: the answer came before the body was read
    bad = c.post("/models", files={"generator": ("g", b"x" * 1000)}, headers={"Authorization": "Bearer mg_nope"})
    assert bad.status_code == 401
    assert c.post("/v2/models/latest/infer", content=b"{}").json() == {"error": bad.json()["error"]["message"].replace(
        "the API key is not valid (unknown or revoked)", "an API key is required: send 'Authorization: Bearer <key>' "
        "(create one with `minegan keys create --tenant NAME`)")}  # /v2 keeps the Open Inference Protocol's error body


def test_metrics_needs_a_key_when_keys_are_required_and_the_open_paths_stay_open(env: tuple[TestClient, dict[str, str]]) -> None:
    c, key = env
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=key).status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/v2", "/v2/health/live", "/"):
        assert c.get(path).status_code == 200, path
    assert c.get("/blobs/jobs/x/model.pt?exp=1&sig=0").status_code == 404  # a signed link is its own credential


def test_inputs_that_gave_a_500_get_a_4xx(env: tuple[TestClient, dict[str, str]]) -> None:
    c, key = env
    assert c.get("/blobs/jobs/x?exp=%C2%B2&sig=0").status_code == 404  # '²' passed str.isdigit()
    deep = c.post("/jobs", headers=key, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                  data={"spec": "[" * 100_000})
    assert deep.status_code == 422 and deep.json()["error"]["code"] == "invalid_spec"
    hook = c.post("/jobs", headers=key, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                  data={"spec": json.dumps({"sources": ["tiny-src"], "webhook": "https://127.0.0.1:99999/"})})
    assert hook.status_code == 422 and "webhook" in hook.json()["error"]["message"]
    big = c.post("/jobs", headers=key, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                 data={"spec": json.dumps({"sources": ["tiny-src"], "options": {"sparse_min_weights": 1e30}})})
    assert big.status_code == 422 and "sparse_min_weights" in big.json()["error"]["message"]
    job = c.post("/jobs", headers=key, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                 data={"spec": json.dumps({"sources": ["tiny-src"], "mining_steps": 1, "finetune_steps": 0, "batch_size": 4})})
    assert job.status_code == 202, job.text
    for after in ("?after=" + str(10**23), ""):  # once an SQLite overflow that dropped the stream after its 200
        headers = {**key, "Last-Event-ID": str(2**63)} if not after else key
        assert c.get(f"/jobs/{job.json()['id']}/events{after}", headers=headers).status_code == 422


@pytest.mark.parametrize("body", [
    "[" * 100_000,
    {"inputs": [{"name": "n", "datatype": "INT32", "shape": [1], "data": [99999999999]}]},
    {"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1], "data": [2**63]}]},
    {"inputs": [{"name": "n", "datatype": "BYTES", "shape": [1], "data": [-1]}]},
    {"inputs": [{"name": "n", "datatype": "BYTES", "shape": [1], "data": [1.5]}]},
    {"inputs": [{"name": "n", "datatype": "BYTES", "shape": [1], "data": [10**13]}]},
    {"inputs": [{"name": "n", "datatype": "INT32", "shape": [2**62, 4], "parameters": {"binary_data_size": 0}}]},
], ids=["deep json", "int32 overflow", "int64 overflow", "bytes -1", "bytes 1.5", "bytes 1e13", "huge shape"])
def test_oip_infer_bad_tensors_get_a_422(env: tuple[TestClient, dict[str, str]], body: object) -> None:
    c, key = env
    raw = body if isinstance(body, str) else json.dumps(body)
    r = c.post("/v2/models/latest/infer", headers={**key, "Content-Type": "application/json"}, content=raw)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("address,public", [
    ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of the cloud metadata address
    ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
    ("::ffff:10.0.0.1", False),
    ("64:ff9b::808:808", True),  # NAT64 of a public address
    ("2606:4700:4700::1111", True),
    ("8.8.8.8", True),
])
def test_the_ssrf_guard_reads_the_ipv4_address_inside_an_ipv6_one(address: str, public: bool) -> None:
    assert webhooks.is_public(ipaddress.ip_address(address)) is public


def test_a_delivery_connects_to_the_address_it_checked() -> None:
    url, host, tls = webhooks.pinned("https://hooks.example.com:8443/x?y=1", "93.184.216.34")
    assert url == "https://93.184.216.34:8443/x?y=1" and host == {"Host": "hooks.example.com:8443"}
    assert tls == {"sni_hostname": "hooks.example.com"}
    assert webhooks.pinned("https://h.example/x", "2606:4700::1")[0] == "https://[2606:4700::1]/x"
    assert webhooks.pinned("http://127.0.0.1:9/x", None) == ("http://127.0.0.1:9/x", {}, {})  # an allowed host as it is


def test_download_links_survive_a_restart_and_work_in_every_process(tmp_path: Path) -> None:
    """Without MINEGAN_SECRET_KEY each process once signed with its own random secret: links of one process were 404 in
    another and died with a restart. The secret is now kept beside the data."""
    from store.blobs import LocalBlobStore

    a, b = LocalBlobStore(tmp_path), LocalBlobStore(tmp_path)  # two processes, or one before and after a restart
    a.put("jobs/j/samples.png", b"png")
    query = a.url("jobs/j/samples.png").split("?", 1)[1]
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert b.verify("jobs/j/samples.png", params["exp"], params["sig"])
    assert (tmp_path / LocalBlobStore.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert not LocalBlobStore(tmp_path / "other").verify("jobs/j/samples.png", params["exp"], params["sig"])
    with pytest.raises(ValueError):
        a.get(LocalBlobStore.SECRET_FILE)  # never served as a blob


def test_a_huge_request_head_gets_431_and_the_server_keeps_answering(tmp_path: Path) -> None:
    """httptools buffered a header of any size (a 100 MB header took 11.5 s and stalled /healthz): `minegan serve`
    now answers 431 once the head passes 64 KiB or 100 fields, and closes the connection."""
    import socket
    import time

    import httpx

    from tests.helpers import embedded_server

    with embedded_server(tmp_path) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            t0 = time.monotonic()
            answer = b""
            try:
                for _ in range(200):  # up to 12.8 MB, in 64 KiB pieces; the server must stop it long before
                    s.sendall(b"a" * 65536)
            except OSError:
                pass  # the server closed the connection
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert time.monotonic() - t0 < 10
        with httpx.Client(base_url=url) as keep_alive:  # bodies do not count toward the heads after them on one connection
            for _ in range(5):
                assert keep_alive.post("/jobs", content=b"x" * 100_000, headers={"Content-Type": "text/plain"}).status_code == 422
                assert keep_alive.get("/healthz").status_code == 200
        many = httpx.get(f"{url}/healthz", headers={f"x-h{i}": "1" for i in range(150)})
        assert many.status_code == 431 and many.json()["error"]["code"] == "headers_too_large"
        assert httpx.get(f"{url}/healthz", headers={"x-fine": "a" * 8000}).status_code == 200


def test_the_target_grid_is_decoded_once_per_job(env: tuple[TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /jobs/{id}/target.png decoded the whole target zip again on every request, on the helper thread every
    tenant's sampling shares; now once, then it is served from storage."""
    import api.routes.jobs

    c, key = env
    calls: list[int] = []
    real = api.routes.jobs.load_target_bytes
    monkeypatch.setattr(api.routes.jobs, "load_target_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    job = c.post("/jobs", headers=key, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                 data={"spec": json.dumps({"sources": ["tiny-src"], "mining_steps": 1, "finetune_steps": 0, "batch_size": 4})}).json()
    grids = [c.get(f"/jobs/{job['id']}/target.png", headers=key) for _ in range(3)]
    assert all(g.status_code == 200 and g.content == grids[0].content for g in grids) and len(calls) == 1


def test_an_upload_declaring_too_many_pixels_in_all_is_refused_before_they_are_decoded(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each image under the per-image limit, together over the per-upload one (MINEGAN_MAX_UPLOAD_PIXELS)."""
    with app_client(tmp_path, monkeypatch, max_upload_pixels=10 * 28 * 28) as c:
        spec = json.dumps({"sources": ["tiny-src"], "mining_steps": 1, "finetune_steps": 0, "batch_size": 4})
        r = c.post("/jobs", files={"images": ("t.zip", target_zip_bytes(16), "application/zip")}, data={"spec": spec})
        assert r.status_code == 413 and r.json()["error"]["code"] == "images_too_large", r.text
        ok = c.post("/jobs", files={"images": ("t.zip", target_zip_bytes(8), "application/zip")}, data={"spec": spec})
        assert ok.status_code == 202, ok.text


def _run_body_limit(chunks: list[tuple[float, dict]], timeout_s: float) -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]
    """Drive BodyLimitMiddleware with a client that sends ``chunks`` ((delay s, ASGI message), ...) and an app that
    reads the body, then waits for the disconnect; returns (what the app received, what was sent to the client)."""
    import asyncio

    from api.limits import BodyLimitMiddleware

    got: list[dict] = []  # type: ignore[type-arg]
    sent: list[dict] = []  # type: ignore[type-arg]
    queue = list(chunks)

    async def receive() -> dict:  # type: ignore[type-arg]
        delay, message = queue.pop(0) if queue else (3600.0, {"type": "http.disconnect"})
        await asyncio.sleep(delay)
        return message

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def, type-arg]
        while True:
            m = await receive()
            got.append(m)
            if m["type"] == "http.disconnect":
                return
            if not m.get("more_body", False):
                break
        got.append(await receive())  # a stream's life: waits for the client to go away
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)

    asyncio.run(BodyLimitMiddleware(app, limit=1 << 20, timeout_s=timeout_s)({"type": "http", "headers": []}, receive, send))
    return got, sent


def test_a_body_that_does_not_arrive_in_time_gets_408_and_a_stream_after_its_body_is_not_cut() -> None:
    part = {"type": "http.request", "body": b"x" * 1000, "more_body": True}
    got, sent = _run_body_limit([(0.0, part), (0.5, part)], timeout_s=0.2)  # stalls before the rest of the body
    assert got[-1]["type"] == "http.disconnect"
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    # the whole body in time, then the app waits longer than the timeout for the client's disconnect: not cut short
    got, sent = _run_body_limit([(0.0, {"type": "http.request", "body": b"{}", "more_body": False}),
                                 (0.5, {"type": "http.disconnect"})], timeout_s=0.2)
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"] and sent[0]["status"] == 200
