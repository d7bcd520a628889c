"""`minegan serve` and `minegan worker` (cli/serve.py, worker/housekeeping.py): the API in one process or several on one
port (each its own SO_REUSEPORT listener), jobs run by a worker process beside them, /metrics summed over the processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.serve import listener
from tests.helpers import free_port, target_zip_bytes, wait_ready
from worker.embedded import EmbeddedWorker


def test_api_processes_each_listen_on_the_same_port() -> None:
    port = free_port()
    a, b = listener("127.0.0.1", port), listener("127.0.0.1", port)  # SO_REUSEPORT: both bind
    try:
        for s in (a, b):
            s.listen(8)
        seen = set()
        for _ in range(64):  # the kernel hands new connections to both listeners
            c = socket.create_connection(("127.0.0.1", port))
            for s in (a, b):
                s.setblocking(False)
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    continue
                seen.add(s.fileno())
                conn.close()
            c.close()
        assert len(seen) == 2
    finally:
        a.close()
        b.close()


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


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(stat.parent.name), (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            continue
    return out


def test_two_api_processes_and_a_worker_in_an_empty_folder(tmp_path: Path) -> None:
    """Jobs run once, by the worker process; both API processes answer, with the same bytes for a seed; /metrics sums
    them; an API process that dies is started again; stopping the server stops everything and removes its files."""
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
        kids = _children(proc.pid)
        workers = [pid for pid, cmd in kids if "cli.main" in cmd and "worker" in cmd]
        apis = [pid for pid, cmd in kids if "spawn_main" in cmd]
        assert len(workers) == 1 and len(apis) == 2, kids
        spec = {"sources": ["mnist-no-9"], "method": "mine", "mining_steps": 2, "finetune_steps": 0, "batch_size": 8,
                "options": {"n_critic": 1}}
        ids = []
        for _ in range(3):  # a new connection each: they land on either process
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

        # 16 keep-alive connections at once, 3 requests each, the same seed everywhere
        lone, _ = _get(socket.create_connection(("127.0.0.1", port)), f"/jobs/{ids[0]}/sample?n=16&seed=5")
        bodies: list[bytes] = []

        def client() -> None:
            s = socket.create_connection(("127.0.0.1", port))
            for _ in range(3):
                bodies.append(_get(s, f"/jobs/{ids[0]}/sample?n=16&seed=5")[0])
            s.close()

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(bodies) == 48 and set(bodies) == {lone}  # every process renders the seed's bytes
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
        served = [s for s in fams["minegan_http_request_duration_seconds"].samples
                  if s.name.endswith("_count") and s.labels["route"] == "/jobs/{job_id}/sample"]
        assert sum(s.value for s in served) == 49  # both processes' requests, summed
        metrics_dir = next((folder / "var" / "work").glob("metrics-*"))
        answered = {p.stem.rsplit("_", 1)[1] for p in metrics_dir.glob("histogram_*.db")}
        assert answered >= {str(pid) for pid in apis}, (answered, apis)  # both processes answered requests
        jobs = {s.labels["status"]: s.value for s in fams["minegan_jobs"].samples if s.labels.get("method") == "mine"}
        assert jobs.get("succeeded") == 3

        # an API process killed: another takes its place, and the server keeps answering and running jobs
        os.kill(apis[0], signal.SIGKILL)
        deadline = time.time() + 120
        while len([p for p, cmd in _children(proc.pid) if "spawn_main" in cmd and p != apis[0]]) < 2:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        wait_ready(url, proc, log, timeout=120)
        r = httpx.post(f"{url}/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                       data={"spec": json.dumps(spec)}, headers={"Connection": "close"}, timeout=60)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
        while (job := httpx.get(f"{url}/jobs/{ids[-1]}").json())["status"] not in ("succeeded", "failed", "canceled"):
            assert time.time() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        for _ in range(6):  # the new job is the newest everywhere
            r = httpx.get(f"{url}/sample?n=4", headers={"Connection": "close"})
            assert r.status_code == 200 and r.headers["x-job-id"] == ids[-1]
    finally:
        proc.terminate()
        proc.wait(60)
    said = log.read_text()
    for job_id in ids:  # the worker ran each job once
        assert said.count(f"job {job_id} succeeded") == 1, said[-3000:]
    assert "2 API processes on the port" in said and "starting another" in said
    assert not list((folder / "var" / "work").glob("metrics-*"))  # the metrics files went with the server
    left = [(p, cmd) for p, cmd in kids if Path(f"/proc/{p}").exists() and "resource_tracker" not in cmd]
    assert not left  # the worker and the API processes stopped with it


def test_workers_must_be_between_1_and_64(tmp_path: Path) -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "minegan"), "serve", "--workers", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--workers: 1 to 64, not 0" in r.stderr
