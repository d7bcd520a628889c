"""Pressure a caller without a key can apply -> docs/benchmarks.md section "keyless_pressure" (issue 35).

``minegan serve`` (embedded, API keys required) in a subprocess, with one tenant's finished job. Then ``--clients``
connections without a key each start a ``POST /jobs`` declaring a 45 MB body, send its first MiB and stall. Measured:
the server process's resident memory before and while they stall, how many got their 401 before sending the rest,
and the other tenant's ``GET /jobs/{id}/sample?n=16`` latency (median and p99 of ``--requests``, sequential) idle and
during the stall.

Usage:  python benchmarks/keyless_pressure.py [--clients 100 --requests 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import command_line, update_section  # noqa: E402
from tests.helpers import free_port, target_zip_bytes, wait_ready, write_tiny_zoo  # noqa: E402

BIN = Path(sys.executable).parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latencies(url: str, headers: dict[str, str], job: str, n: int, every_ms: float = 20.0) -> tuple[float, float]:
    """Median and p99 (ms) of ``n`` sequential ``/sample?n=16`` requests, one started every ``every_ms`` at most."""
    times = []
    with httpx.Client(timeout=60) as c:
        for i in range(n):
            t0 = time.perf_counter()
            r = c.get(f"{url}/jobs/{job}/sample", params={"n": 16, "seed": i}, headers=headers)
            assert r.status_code == 200, r.text
            times.append(1000 * (time.perf_counter() - t0))
            time.sleep(max(0.0, every_ms / 1000 - (time.perf_counter() - t0)))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


@contextlib.contextmanager
def keyed_server(tenants: tuple[str, ...], **env_extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, dict[str, str]]]]:
    """``minegan serve`` (embedded, API keys required, the tiny source) on a free port; yields (process, url, each tenant's
    headers with its key)."""
    tmp = Path(tempfile.mkdtemp())
    write_tiny_zoo(tmp / "models", "tiny-src")
    port = free_port()
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / "work"), "MINEGAN_MODELS_DIR": str(tmp / "models"), "MINEGAN_AUTH": "required", **env_extra}
    subprocess.run([str(BIN / "minegan"), "keys", "list"], env=env, capture_output=True, check=True)
    auth = {t: {"Authorization": "Bearer " + subprocess.run([str(BIN / "minegan"), "keys", "create", "--tenant", t], env=env,
                                                            capture_output=True, text=True, check=True).stdout.strip()}
            for t in tenants}
    proc = subprocess.Popen([str(BIN / "minegan"), "serve", "--port", str(port)], env=env, stdout=open(tmp / "log", "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, tmp / "log", timeout=120)
        yield proc, url, auth
    finally:
        proc.terminate()
        proc.wait(60)


def finished_job(url: str, headers: dict[str, str]) -> str:
    """A two-step job of the tiny source, run to its end; its id."""
    spec = {"sources": ["tiny-src"], "mining_steps": 2, "finetune_steps": 0, "batch_size": 8}
    job = httpx.post(f"{url}/jobs", headers=headers, files={"images": ("t.zip", target_zip_bytes(), "application/zip")},
                     data={"spec": json.dumps(spec)}, timeout=120).json()["id"]
    while httpx.get(f"{url}/jobs/{job}", headers=headers).json()["status"] not in ("succeeded", "failed"):
        time.sleep(0.3)
    return str(job)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=60)
    a = ap.parse_args()
    with keyed_server(("bob",), OMP_NUM_THREADS="1") as (proc, url, auth):
        headers = auth["bob"]
        job = finished_job(url, headers)
        latencies(url, headers, job, 10)  # warm: the model is loaded and cached
        idle = latencies(url, headers, job, a.requests)
        before = rss_mb(proc.pid)
        head = (f"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {45 * 2**20}\r\n\r\n").encode()
        socks, refused = [], 0
        for _ in range(a.clients):
            s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10)
            s.sendall(head)
            try:
                s.sendall(b"x" * 2**20)  # the first MiB; then it stalls
            except OSError:
                pass
            socks.append(s)
        time.sleep(3)
        during = rss_mb(proc.pid)
        busy = latencies(url, headers, job, a.requests)
        for s in socks:
            s.settimeout(1)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 401")
            except OSError:
                pass
            s.close()
    text = "\n".join([
        "## Pressure without a key (issue 35)", "",
        f"Command: {command_line()}, 2-core CPU). `minegan serve` (embedded, `MINEGAN_AUTH=required`) "
        f"with one tenant's finished job; {a.clients} connections without a key each start a `POST /jobs` declaring a 45 MB "
        "body, send its first MiB and stall. The server checks the key from the headers before it reads any body "
        "(api/limits.py, `KeyFirstMiddleware`).", "",
        "| measure | idle | while the key-less uploads stall |", "|---|---|---|",
        f"| server resident memory | {before:.0f} MB | {during:.0f} MB ({during - before:+.0f} MB; goal: under +50 MB) |",
        f"| key-less connections answered 401 | - | {refused} of {a.clients} |",
        f"| another tenant's `/jobs/{{id}}/sample?n=16`, median / p99 of {a.requests} | {idle[0]:.1f} / {idle[1]:.1f} ms | "
        f"{busy[0]:.1f} / {busy[1]:.1f} ms (goal: p99 within 2x of idle) |",
    ])
    update_section("keyless_pressure", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
