"""One tenant against another -> docs/benchmarks.md section "tenant_pressure" (issue 35).

``minegan serve`` (embedded, API keys required) in a subprocess; tenants ``alice`` and ``bob`` each with a finished job.
While alice sends hostile-but-valid work from a process of her own: ``--uploaders`` threads that each submit, again and again, a zip of 15 PNGs
of 4096x4096 (each at the per-image pixel limit, 252 Mpx in all, under the per-upload limit) with a ``batch_size``
that is refused only after the zip is checked (so no job and no quota is used), and ``--grids`` threads that fetch
her job's ``target.png`` again and again, bob measures ``GET /jobs/{id}/sample?n=16`` (median and p99 of
``--requests``, one every ``--every-ms``) in ``--rounds`` idle phases and as many pressure phases, alternating, and
the time of a 100-image submit idle and under the pressure.

Usage:  python benchmarks/tenant_pressure.py [--uploaders 2 --grids 3 --requests 300 --rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import command_line, update_section  # noqa: E402
from benchmarks.keyless_pressure import finished_job, keyed_server, latencies  # noqa: E402
from store.settings import Settings  # noqa: E402
from tests.helpers import target_zip_bytes  # noqa: E402

BIN = Path(sys.executable).parent
SPEC = {"sources": ["tiny-src"], "mining_steps": 2, "finetune_steps": 0, "batch_size": 8}


def big_zip() -> bytes:
    buf = io.BytesIO()
    png = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(png, format="PNG")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(15):
            z.writestr(f"{i}.png", png.getvalue())
    return buf.getvalue()


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and every process below it that is still running."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree = {root}
    for _ in range(4):  # serve -> API process / worker -> checker, job child
        tree |= {pid for pid, (ppid, _) in stats.items() if ppid in tree}
    return sum(stats[pid][1] for pid in tree if pid in stats)


def submit_s(url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/jobs", headers=headers, files={"images": ("t.zip", target_zip_bytes(100), "application/zip")},
                   data={"spec": json.dumps(SPEC)}, timeout=120)
    assert r.status_code == 202, r.text
    httpx.post(f"{url}/jobs/{r.json()['id']}/cancel", headers=headers)
    return time.perf_counter() - t0


CTX = multiprocessing.get_context("spawn")
COUNTS = ("uploads", "grids", "refused_after_check", "rate_limited", "grids_limited")


def pressure(url: str, headers: dict[str, str], job: str, uploaders: int, grids: int, ready: Any, pressing: Any, stop: Any,
             counts: dict[str, Any]) -> None:
    """Alice's clients, in a process of their own (as another tenant's would be: in one process with bob's client their
    threads took the GIL from it and added to his measured latency), sending only while ``pressing`` is set."""
    data = big_zip()

    def count(key: str, by: int = 1) -> None:
        with counts[key].get_lock():
            counts[key].value += by

    def uploader() -> None:  # a hostile client: it does not wait for Retry-After
        with httpx.Client(timeout=300) as c:
            while not stop.is_set():
                if not pressing.wait(0.1):
                    continue
                try:
                    r = c.post(f"{url}/jobs", headers=headers, files={"images": ("big.zip", data, "application/zip")},
                               data={"spec": json.dumps({**SPEC, "batch_size": 64})})
                except httpx.TransportError:  # the server answered 429 and closed while the body was being sent
                    count("uploads")
                    count("rate_limited")
                    continue
                count("uploads")
                count("refused_after_check", r.status_code == 422 and "batch_size" in r.text)
                count("rate_limited", r.status_code == 429)

    def grid() -> None:
        with httpx.Client(timeout=300) as c:
            while not stop.is_set():
                if not pressing.wait(0.1):
                    continue
                code = c.get(f"{url}/jobs/{job}/target.png", headers=headers).status_code
                assert code in (200, 429), code
                count("grids")
                count("grids_limited", code == 429)

    threads = [threading.Thread(target=uploader) for _ in range(uploaders)] + [threading.Thread(target=grid) for _ in range(grids)]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--grids", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--submits", type=int, default=3, help="bob's timed submits, idle and under pressure (with his finished "
                    "job, under his upload rate)")
    ap.add_argument("--every-ms", type=float, default=20.0, help="bob's pace: one sample request this often (a client under "
                    "its tenant's request rate)")
    ap.add_argument("--rounds", type=int, default=3, help="idle and pressure phases, interleaved")
    a = ap.parse_args()
    idle: list[tuple[float, float]] = []
    busy: list[tuple[float, float]] = []
    cores: list[dict[str, float]] = []
    with keyed_server(("alice", "bob"), MINEGAN_MAX_CONCURRENT_JOBS="100") as (server, url, auth):
        jobs = {t: finished_job(url, auth[t]) for t in ("alice", "bob")}
        latencies(url, auth["bob"], jobs["bob"], 20, a.every_ms)  # warm
        idle_submit = statistics.median(submit_s(url, auth["bob"]) for _ in range(a.submits))
        ready, pressing, stop = CTX.Event(), CTX.Event(), CTX.Event()
        counts = {k: CTX.Value("i", 0) for k in COUNTS}
        alice = CTX.Process(target=pressure, args=(url, auth["alice"], jobs["alice"], a.uploaders, a.grids, ready, pressing, stop,
                                                   counts))
        alice.start()
        assert alice.pid is not None and ready.wait(120)  # her process has imported and built its zip: its start is not part of the first idle phase
        time.sleep(2)
        busy_submit = 0.0
        try:
            for r in range(a.rounds):  # idle, then pressure, again and again
                idle.append(latencies(url, auth["bob"], jobs["bob"], a.requests, a.every_ms))
                pressing.set()
                time.sleep(2)
                wall0, server0, alice0, bob0 = time.perf_counter(), tree_cpu_s(server.pid), tree_cpu_s(alice.pid), time.process_time()
                busy.append(latencies(url, auth["bob"], jobs["bob"], a.requests, a.every_ms))
                wall = time.perf_counter() - wall0
                cores.append({"server": (tree_cpu_s(server.pid) - server0) / wall, "alice": (tree_cpu_s(alice.pid) - alice0) / wall,
                              "bob": (time.process_time() - bob0) / wall})
                if r == a.rounds - 1:  # once: bob's own uploads are under his upload rate too
                    busy_submit = statistics.median(submit_s(url, auth["bob"]) for _ in range(a.submits))
                pressing.clear()
                time.sleep(4)  # a check that has started runs to its end
        finally:
            stop.set()
            alice.join()
    counts = {k: v.value for k, v in counts.items()}
    idle_p99, busy_p99 = statistics.median(p for _, p in idle), statistics.median(p for _, p in busy)

    def per_round(xs: list[tuple[float, float]]) -> str:
        return "; ".join(f"{m:.1f} / {p:.1f}" for m, p in xs) + " ms"

    text = "\n".join([
        "## One tenant against another (issue 35)", "",
        f"Command: {command_line()}, 2-core CPU). `minegan serve` (embedded, `MINEGAN_AUTH=required`), "
        f"tenants alice and bob with a finished job each. The pressure: {a.uploaders} of alice's clients submit, again and "
        "again, a zip of 15 PNGs of 4096x4096 (each at the per-image pixel limit, 252 Mpx in all) with a `batch_size` "
        f"that is refused only after the zip is checked (no job, no quota used), and {a.grids} more fetch her job's "
        "`target.png` again and again, none of them waiting for `Retry-After`; they run in a process of their own, as another "
        "tenant's clients would. Upload checks run one at a time in the idle scheduling class (api/compute.py), the tenant "
        "served least recently first (api/fair.py); a job's target grid is decoded once and kept. Bob sends one sample "
        f"request every {a.every_ms:g} ms; {a.rounds} idle and {a.rounds} pressure phases alternate.", "",
        "| bob's measure | idle | under alice's pressure |", "|---|---|---|",
        f"| `/jobs/{{id}}/sample?n=16`, median / p99 of {a.requests}, per phase | {per_round(idle)} | {per_round(busy)} |",
        f"| p99, median over the phases | {idle_p99:.1f} ms | {busy_p99:.1f} ms (**{busy_p99 / idle_p99:.2f}x** idle; goal: "
        "within 2x) |",
        f"| a 100-image `POST /jobs`, median of {a.submits} (before the first phase; in the last pressure phase) | "
        f"{idle_submit:.2f} s | {busy_submit:.2f} s (it waits for at most one of alice's checks) |",
        "",
        f"Under the pressure alice's clients sent {counts['uploads']} uploads ({counts['refused_after_check']} refused after "
        f"their check, as intended; {counts['rate_limited']} refused by her request or upload rate before their body) and asked "
        f"for `target.png` {counts['grids']} times ({counts['grids_limited']} refused by her request rate). While bob measured "
        f"under the pressure the server's processes used {statistics.median(c['server'] for c in cores):.2f} cores and the "
        f"clients {statistics.median(c['alice'] for c in cores):.2f} (alice's, a process of their own) and "
        f"{statistics.median(c['bob'] for c in cores):.3f} (bob's), of 2 (medians over the phases). The rates are the defaults "
        f"(`MINEGAN_RATE_LIMIT` {Settings().rate_limit!r}, `MINEGAN_UPLOAD_RATE_LIMIT` {Settings().upload_rate_limit!r}, per tenant; api/limits.py).",
    ])
    update_section("tenant_pressure", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
