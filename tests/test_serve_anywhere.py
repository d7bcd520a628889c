"""`minegan serve` as a newcomer starts it: in an empty folder, with no MINEGAN_* paths set. It creates its data
folder (./var), says where the data lives, answers /readyz and runs a job to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import free_port, target_zip_bytes, wait_ready


def test_serve_in_an_empty_folder_runs_a_job(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINEGAN_") or k == "MINEGAN_CACHE"}
    env["OMP_NUM_THREADS"] = "1"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "minegan"), "serve", "--port", str(port)], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, tmp_path / "serve.log")
        assert httpx.get(f"{url}/readyz").json()["status"] == "ok"
        spec = {"sources": ["mnist-no-9"], "method": "mine", "mining_steps": 2, "finetune_steps": 0, "batch_size": 8,
                "options": {"n_critic": 1}}
        r = httpx.post(f"{url}/jobs", files={"images": ("t.zip", target_zip_bytes(), "application/zip")}, data={"spec": json.dumps(spec)},
                       timeout=60)  # the upload check runs at low priority: seconds on a busy machine
        assert r.status_code == 202, r.text
        deadline = time.time() + 120
        while (job := httpx.get(f"{url}/jobs/{r.json()['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
            assert time.time() < deadline, job
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        assert httpx.get(f"{url}/sample?n=4").status_code == 200
        worker = _worker_of(proc.pid)
        assert worker is not None  # the jobs ran in `minegan worker`, started beside the API
    finally:
        proc.terminate()
        proc.wait(20)
    said = (tmp_path / "serve.log").read_text()
    assert f"files in {folder / 'var' / 'blobs'}" in said and (folder / "var" / "minegan.db").exists()
    deadline = time.time() + 30
    while Path(f"/proc/{worker}").exists():  # stopping the server stops its worker
        assert time.time() < deadline, "minegan worker outlived minegan serve"
        time.sleep(0.2)


def _worker_of(pid: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and b"worker" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
        except (OSError, ValueError):
            continue
    return None


def test_a_worker_stops_when_the_server_that_started_it_is_killed(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINEGAN_") or k == "MINEGAN_CACHE"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "minegan"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "serve.log")
        worker = _worker_of(proc.pid)
        assert worker is not None
    finally:
        proc.kill()  # no chance to stop its worker itself
        proc.wait(20)
    deadline = time.time() + 30
    while Path(f"/proc/{worker}").exists() and b"Z" not in Path(f"/proc/{worker}/stat").read_bytes().split(b")")[1][:3]:
        assert time.time() < deadline, "minegan worker outlived a killed minegan serve"
        time.sleep(0.2)
