"""The demo's client: POST 100 real MNIST 9s against mnist-no-9, show progress, save GET /sample?n=16."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

url, target, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
spec = {"sources": ["mnist-no-9"], "method": "minegan++"}
with httpx.Client(base_url=url, timeout=60) as c:
    r = c.post("/jobs", files={"images": (target.name, target.read_bytes(), "application/zip")},
               data={"spec": json.dumps(spec)})
    if r.status_code != 202:
        sys.exit(f"submit failed: {r.status_code} {r.text}")
    job = r.json()
    print(f"job {job['id']} queued: {job['target']['n_images']} target images, {job['total_steps']} steps", flush=True)
    t0 = time.time()
    while job["status"] in ("queued", "running"):
        time.sleep(2)
        job = c.get(f"/jobs/{job['id']}").json()
        stats = job.get("stats") or {}
        losses = " ".join(f"{k}={stats[k]:.3g}" for k in ("d_loss", "g_loss") if k in stats)
        bar = "#" * int(30 * job["progress"])
        print(f"\r[{bar:<30}] {100 * job['progress']:5.1f}% {job['phase'] or job['status']:<9} step {job['step']}/"
              f"{job['total_steps']} {losses} ({time.time() - t0:.0f}s)", end="", flush=True)
    print()
    if job["status"] != "succeeded":
        sys.exit(f"job {job['status']}: {job.get('error')}")
    print(f"metrics: {job['metrics']}")
    s = c.get("/sample", params={"n": 16})
    s.raise_for_status()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(s.content)
    print(f"wrote {out} (GET /sample?n=16)")
