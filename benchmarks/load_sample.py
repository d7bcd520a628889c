"""A bounded load test of ``GET /sample?n=16`` on loopback -> docs/benchmarks.md, section "load" (issue 5).

Starts ``minegan serve`` (embedded, with API keys required so the auth path is part of every request),
creates a key with ``minegan keys create``, runs one small job on ``mnist-no-9``, then sends a fixed number
of requests from ``--clients`` concurrent connections: every request has its own seed, and every tenth one
is a bad request (n=0 -> 422, an unknown job -> 404) to show that errors do not disturb the rest.
Reports status counts, unexpected errors and latency percentiles.

Usage: python benchmarks/load_sample.py [--requests 2000 --clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from benchmarks.sampling import _wait_job  # noqa: E402
from core.data import write_mnist_zip  # noqa: E402
from tests.helpers import free_port, wait_ready  # noqa: E402

BIN = Path(sys.executable).parent


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    command = "python benchmarks/load_sample.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="minegan-load-"))
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / "work"), "MINEGAN_AUTH": "required"}
    env.pop("MINEGAN_BROKER_URL", None)
    key = subprocess.run([str(BIN / "minegan"), "keys", "create", "--tenant", "load"], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    port = free_port()
    server = subprocess.Popen([str(BIN / "minegan"), "serve", "--port", str(port)], env=env,
                              stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        wait_ready(url, server, tmp / "server.log", timeout=120)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as c:
            spec = {"sources": ["mnist-no-9"], "method": "minegan", "mining_steps": 10, "finetune_steps": 10, "batch_size": 32}
            target = write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0).read_bytes()
            job = c.post("/jobs", files={"images": ("t.zip", target, "application/zip")}, data={"spec": json.dumps(spec)}).json()
            assert _wait_job(c, job["id"])["status"] == "succeeded"
            c.get("/sample?n=16")  # the model is loaded once

        def one(i: int) -> tuple[str, int, float]:
            if i % 10 == 5:
                kind, path, want = "bad n", "/sample?n=0", 422
            elif i % 10 == 9:
                kind, path, want = "unknown job", "/jobs/no-such-job/sample", 404
            else:
                kind, path, want = "sample n=16", f"/sample?n=16&seed={i}", 200
            t0 = time.perf_counter()
            try:
                status = clients[i % a.clients].get(path).status_code
            except httpx.HTTPError:
                status = -1
            return kind, (status if status == want else -status), 1000 * (time.perf_counter() - t0)

        clients = [httpx.Client(base_url=url, timeout=60, headers=headers) for _ in range(a.clients)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as pool:
            results = list(pool.map(one, range(a.requests)))
        wall = time.perf_counter() - t0
        for cl in clients:
            cl.close()
        alive = httpx.get(f"{url}/healthz").status_code == 200
    finally:
        server.terminate()
        server.wait(30)
    rows = []
    unexpected = 0
    for kind in ("sample n=16", "bad n", "unknown job"):
        res = [r for r in results if r[0] == kind]
        lat = sorted(ms for _, _, ms in res)
        codes = Counter(s for _, s, _ in res)
        bad = sum(n for s, n in codes.items() if s < 0)
        unexpected += bad
        rows.append(f"| {kind} | {len(res)} | {', '.join(f'{abs(s)}: {n}' for s, n in sorted(codes.items()))} | {bad} | "
                    f"{statistics.median(lat):.1f} | {_pct(lat, 0.9):.1f} | {_pct(lat, 0.99):.1f} | {lat[-1]:.1f} |")
    text = "\n".join([
        "## Load: bounded /sample load on loopback (issue 5)", "",
        f"Command: `{command}`  ",
        f"Embedded server with API keys required, one finished `mnist-no-9` job; {a.requests} requests from {a.clients} "
        f"concurrent keep-alive clients in {wall:.1f} s ({a.requests / wall:.0f} req/s); every tenth request is a bad one. "
        "2-core CPU shared by server and clients.", "",
        "| request | count | status: count | unexpected | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        f"Unexpected answers (wrong status or a failed connection): **{unexpected}**. Server still healthy afterwards: "
        f"**{'yes' if alive else 'no'}**.",
    ])
    print(text)
    update_section("load", text)
    return 0 if unexpected == 0 and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
