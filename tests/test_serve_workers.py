"""`minegan serve --workers N` (api/procs.py): several API processes on one port share the cores and the connections,
one of them runs the embedded worker, and /metrics sums them all."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api import procs
from tests.helpers import free_port, target_zip_bytes, wait_ready
from worker.embedded import EmbeddedWorker


def test_each_process_takes_its_own_slot_and_renders_with_all_cores_only_while_the_others_are_idle(tmp_path: Path) -> None:
    a, b = procs.CoreShare(tmp_path, all_threads=2), procs.CoreShare(tmp_path, all_threads=2)
    try:
        assert (a.slot, b.slot) == (0, 1)
        assert a.begin() == 2  # b has not rendered: a lone render gets every core
        a.end()
        assert b.begin() == 1  # a rendered less than LINGER_S ago: one thread each
        assert a.begin() == 1  # b is rendering now
        b.end()
        a.end()
        time.sleep(procs.LINGER_S * 2)
        assert not a.others_busy()  # b's linger is over
        assert a.begin() == 2
    finally:
        a.close()
        b.close()
    c = procs.CoreShare(tmp_path, all_threads=2)  # a closed slot is free again, and reads as idle
    try:
        assert c.slot == 0 and not c.others_busy()
    finally:
        c.close()


def test_a_process_with_more_than_its_share_of_connections_closes_them_until_it_has_its_share(tmp_path: Path) -> None:
    a, b = procs.CoreShare(tmp_path, 2), procs.CoreShare(tmp_path, 2)
    try:
        conns = [procs.Connections(a, processes=2), procs.Connections(b, processes=2)]
        where = [0] * 8  # a burst: all 8 clients landed on a
        port = list(range(40000, 40008))
        closes_by_round = []
        for _ in range(6):  # each client sends a request; a closed one reconnects (new port), landing on the other process
            closes = 0
            for k in range(8):
                if conns[where[k]].should_close(("127.0.0.1", port[k])):
                    closes += 1
                    where[k], port[k] = 1 - where[k], port[k] + 100
            closes_by_round.append(closes)
        assert sorted([where.count(0), where.count(1)]) == [4, 4]  # spread evenly
        assert closes_by_round[-2:] == [0, 0], closes_by_round  # and then left alone
        # a process alone, whatever the setting said (the other died, or never started): it keeps every connection
        alone = procs.CoreShare(tmp_path / "lone", 2)
        lone = procs.Connections(alone, processes=2)
        assert not any(lone.should_close(("127.0.0.1", 30000 + k)) for k in range(8))
        assert lone.processes == 1
        alone.close()
    finally:
        a.close()
        b.close()


def test_the_middleware_answers_with_connection_close_only_when_asked(tmp_path: Path) -> None:
    app = Starlette(routes=[Route("/", lambda _: PlainTextResponse("ok"))])
    app.add_middleware(procs.BalanceConnections)
    client = TestClient(app)
    assert "connection" not in client.get("/").headers  # a single process: untouched
    share = procs.CoreShare(tmp_path, 2)
    try:
        procs.activate(share, processes=2)
        assert procs._connections is not None
        procs._connections.should_close = lambda _client: True  # type: ignore[method-assign]
        r = client.get("/")
        assert r.status_code == 200 and r.text == "ok" and r.headers["connection"] == "close"
    finally:
        procs.activate(None)


def test_the_embedded_worker_takes_jobs_that_another_process_queued(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from store import jobs as jobs_dao
    from store.settings import Settings

    queued = ["a", "b"]
    monkeypatch.setattr(jobs_dao, "queued", lambda url: list(queued))
    ran: list[str] = []
    done = threading.Event()

    def run(self: EmbeddedWorker, job_id: str) -> None:
        ran.append(job_id)
        queued.remove(job_id)  # it is no longer queued once it ran
        if len(ran) == 3:
            done.set()

    monkeypatch.setattr(EmbeddedWorker, "_run", run)
    w = EmbeddedWorker(Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite"), poll_s=0.02)
    w.start([])
    try:
        time.sleep(0.2)
        queued.append("c")  # queued later, by another process
        assert done.wait(5), ran
        time.sleep(0.1)
        assert ran == ["a", "b", "c"]  # each once, although every poll saw the queued ones again until they ran
    finally:
        w.stop(5)


def _get(sock: socket.socket, path: str) -> tuple[bytes, bool]:
    """One GET on a keep-alive socket: (body, whether the server closed the connection after it)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(1 << 16)
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert b" 200 " in lines[0], head
    length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(1 << 16)
    return body, any(x.lower() == b"connection: close" for x in lines)


def _holders(path: Path) -> list[int]:
    """Processes with ``path`` open (each API process opens the primary's lock; only the primary keeps it open)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def test_two_processes_in_an_empty_folder_run_jobs_once_share_samples_and_metrics_and_survive_the_primary(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINEGAN_") or k == "MINEGAN_CACHE"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "minegan"), "-v", "serve", "--port", str(port), "--workers", "2"],
                            cwd=folder, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout=120)
        spec = {"sources": ["mnist-no-9"], "method": "mine", "mining_steps": 2, "finetune_steps": 0, "batch_size": 8,
                "options": {"n_critic": 1}}
        ids = []
        for _ in range(3):  # a new connection each: some land on the process without the worker
            r = httpx.post(f"{url}/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                           data={"spec": json.dumps(spec)}, headers={"Connection": "close"},
                           timeout=60)  # the upload check runs at low priority: seconds when the machine is busy
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.time() + 180
        for job_id in ids:
            while (job := httpx.get(f"{url}/jobs/{job_id}", timeout=60).json())["status"] not in ("succeeded", "failed", "canceled"):
                assert time.time() < deadline, job
                time.sleep(0.3)
            assert job["status"] == "succeeded", job

        newest = max((httpx.get(f"{url}/jobs/{j}").json() for j in ids), key=lambda j: j["finished_at"])["id"]
        for _ in range(6):  # GET /sample: the newest job, whichever process answers (a new connection each)
            r = httpx.get(f"{url}/sample?n=4", headers={"Connection": "close"})
            assert r.status_code == 200 and r.headers["x-job-id"] == newest

        # 8 keep-alive connections at once, 6 requests each, the same seed everywhere
        lone, _ = _get(socket.create_connection(("127.0.0.1", port)), f"/jobs/{ids[0]}/sample?n=16&seed=5")
        bodies: list[bytes] = []
        closed = []

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port))
            for _ in range(6):
                body, close = _get(s, f"/jobs/{ids[0]}/sample?n=16&seed=5")
                bodies.append(body)
                if close:
                    closed.append(1)
                    s.close()
                    s = socket.create_connection(("127.0.0.1", port))
            s.close()

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(bodies) == 48 and set(bodies) == {lone}  # every process renders the seed's bytes
        conns = struct.unpack_from(f"{procs.SLOTS}d", (folder / "var" / "work" / "api-cores.bin").read_bytes(), 8 * procs.SLOTS)
        assert conns[0] > 0 and conns[1] > 0, conns  # both processes were answering

        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
        served = sum(s.value for s in fams["minegan_http_request_duration_seconds"].samples
                     if s.name.endswith("_count") and s.labels["route"] == "/jobs/{job_id}/sample")
        assert served == 49  # both processes' requests, summed
        misses = sum(s.value for s in fams["minegan_model_cache"].samples if s.labels.get("result") == "miss")
        assert misses >= 2  # each process loaded the model for itself
        jobs = {s.labels["status"]: s.value for s in fams["minegan_jobs"].samples if s.labels.get("method") == "mine"}
        assert jobs.get("succeeded") == 3

        # the primary killed: uvicorn starts another process, which takes the primary's work, and a new job runs
        lock = folder / "var" / "work" / "api-primary.lock"
        primary = _holders(lock)
        assert len(primary) == 1, primary
        os.kill(primary[0], 9)
        deadline = time.time() + 120
        while not (holders := _holders(lock)) or holders == primary:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        r = httpx.post(f"{url}/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                       data={"spec": json.dumps(spec)}, headers={"Connection": "close"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
        while (job := httpx.get(f"{url}/jobs/{ids[-1]}").json())["status"] not in ("succeeded", "failed", "canceled"):
            assert time.time() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        for _ in range(6):  # the new job is the newest everywhere: the new primary's cache and the other's database
            r = httpx.get(f"{url}/sample?n=4", headers={"Connection": "close"})
            assert r.status_code == 200 and r.headers["x-job-id"] == ids[-1]
    finally:
        proc.terminate()
        proc.wait(30)
    said = log.read_text()
    for job_id in ids:  # the primary's worker ran each job once
        assert said.count(f"job {job_id} succeeded") == 1, said[-3000:]
    assert "2 processes sharing the port" in said
    assert not list((folder / "var" / "work").glob("metrics-*"))  # the metrics files went with the server


def test_workers_must_be_between_1_and_64(tmp_path: Path) -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "minegan"), "serve", "--workers", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--workers: 1 to 64, not 0" in r.stderr
