"""One tenant against another -> docs/benchmarks.md section "tenant_pressure" (issue 35).

``minegan serve`` (embedded, API keys required) in a subprocess; tenants ``alice`` and ``bob`` each with a finished job.
While alice sends hostile-but-valid work: ``--uploaders`` threads that each submit, again and again, a zip of 15 PNGs
of 4096x4096 (each at the per-image pixel limit, 252 Mpx in all, under the per-upload limit) with a ``batch_size``
that is refused only after the zip is checked (so no job and no quota is used), and ``--grids`` threads that fetch
her job's ``target.png`` again and again, bob measures ``GET /jobs/{id}/sample?n=16`` (median and p99 of
``--requests``, sequential) and the time of a 100-image submit, first idle, then during the pressure.

Usage:  python benchmarks/tenant_pressure.py [--uploaders 2 --grids 3 --requests 200]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import shlex
import statistics
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
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


def submit_s(url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/jobs", headers=headers, files={"images": ("t.zip", target_zip_bytes(100), "application/zip")},
                   data={"spec": json.dumps(SPEC)}, timeout=120)
    assert r.status_code == 202, r.text
    httpx.post(f"{url}/jobs/{r.json()['id']}/cancel", headers=headers)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--grids", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--submits", type=int, default=3)
    ap.add_argument("--every-ms", type=float, default=20.0, help="bob's pace: one sample request this often (a client under "
                    "its tenant's request rate)")
    a = ap.parse_args()
    stop = threading.Event()
    counts = {"uploads": 0, "grids": 0, "refused_after_check": 0, "rate_limited": 0, "grids_limited": 0}
    with keyed_server(("alice", "bob"), MINEGAN_MAX_CONCURRENT_JOBS="100") as (_, url, auth):
        jobs = {t: finished_job(url, auth[t]) for t in ("alice", "bob")}
        latencies(url, auth["bob"], jobs["bob"], 20, a.every_ms)  # warm
        idle = latencies(url, auth["bob"], jobs["bob"], a.requests, a.every_ms)
        idle_submit = statistics.median(submit_s(url, auth["bob"]) for _ in range(a.submits))
        data = big_zip()

        def uploader() -> None:  # a hostile client: it does not wait for Retry-After
            with httpx.Client(timeout=300) as c:
                while not stop.is_set():
                    try:
                        r = c.post(f"{url}/jobs", headers=auth["alice"], files={"images": ("big.zip", data, "application/zip")},
                                   data={"spec": json.dumps({**SPEC, "batch_size": 64})})
                    except httpx.TransportError:  # the server answered 429 and closed while the body was being sent
                        counts["uploads"] += 1
                        counts["rate_limited"] += 1
                        continue
                    counts["uploads"] += 1
                    counts["refused_after_check"] += r.status_code == 422 and "batch_size" in r.text
                    counts["rate_limited"] += r.status_code == 429

        def grids() -> None:
            with httpx.Client(timeout=300) as c:
                while not stop.is_set():
                    code = c.get(f"{url}/jobs/{jobs['alice']}/target.png", headers=auth["alice"]).status_code
                    assert code in (200, 429), code
                    counts["grids"] += 1
                    counts["grids_limited"] += code == 429

        threads = [threading.Thread(target=uploader) for _ in range(a.uploaders)] + [threading.Thread(target=grids) for _ in range(a.grids)]
        for t in threads:
            t.start()
        time.sleep(2)
        busy = latencies(url, auth["bob"], jobs["bob"], a.requests, a.every_ms)
        busy_submit = statistics.median(submit_s(url, auth["bob"]) for _ in range(a.submits))
        stop.set()
        for t in threads:
            t.join()
        time.sleep(2)
        after = latencies(url, auth["bob"], jobs["bob"], a.requests, a.every_ms)  # idle again: the stricter of the two idle p99s is the bar
    cmd = " ".join(["python benchmarks/tenant_pressure.py", *(shlex.quote(x) for x in sys.argv[1:])])
    text = "\n".join([
        "## One tenant against another (issue 35)", "",
        f"Command: `{cmd}` ({datetime.date.today().isoformat()}, 2-core CPU). `minegan serve` (embedded, `MINEGAN_AUTH=required`), "
        f"tenants alice and bob with a finished job each. The pressure: {a.uploaders} of alice's clients submit, again and "
        "again, a zip of 15 PNGs of 4096x4096 (each at the per-image pixel limit, 252 Mpx in all) with a `batch_size` "
        f"that is refused only after the zip is checked (no job, no quota used), and {a.grids} more fetch her job's "
        "`target.png` again and again. Upload checks run one at a time, the tenant served least recently first "
        "(api/fair.py); a job's target grid is decoded once and kept.", "",
        "| bob's measure | idle (before / after) | under alice's pressure |", "|---|---|---|",
        f"| `/jobs/{{id}}/sample?n=16`, median / p99 of {a.requests} | {idle[0]:.1f} / {idle[1]:.1f} ms; {after[0]:.1f} / "
        f"{after[1]:.1f} ms | {busy[0]:.1f} / {busy[1]:.1f} ms (p99 {busy[1] / min(idle[1], after[1]):.2f}x the lower idle p99; "
        "goal: within 2x) |",
        f"| a 100-image `POST /jobs`, median of {a.submits} | {idle_submit:.2f} s | {busy_submit:.2f} s (it waits for at most "
        "one of alice's checks) |",
        "",
        f"During the pressure alice's clients sent {counts['uploads']} uploads ({counts['refused_after_check']} refused after "
        f"their check, as intended; {counts['rate_limited']} refused by her upload rate before their body) and asked for "
        f"`target.png` {counts['grids']} times ({counts['grids_limited']} refused by her request rate). Bob sends one "
        f"sample request every {a.every_ms:g} ms. The rates are the defaults (`MINEGAN_RATE_LIMIT` "
        f"{Settings().rate_limit!r}, `MINEGAN_UPLOAD_RATE_LIMIT` {Settings().upload_rate_limit!r}, per tenant; api/limits.py).",
    ])
    update_section("tenant_pressure", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
