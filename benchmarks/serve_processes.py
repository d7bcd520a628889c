"""The API's processes before and after standard process management -> docs/benchmarks.md, "serve_processes" (issue 34).

Two versions of the embedded server run side by side in one run, on the same SQLite database and storage: ``before``,
a checkout of an earlier commit (``--before DIR``, e.g. ``git worktree add /tmp/before ad31606``, where several API
processes shared one socket, switched their thread counts by a shared file and balanced connections with
``Connection: close``), and ``after``, this checkout (one ``SO_REUSEPORT`` listener per process, a fixed
``cores / N`` threads each, jobs in a ``minegan worker`` process). Each version runs one server with one API
process and one with two. Per round, in an order that rotates:

* lone requests (one socket client, one request at a time) of ``GET /jobs/{id}/sample?n=16`` against each
  one-process server, in blocks of 10 alternating with the same call in this process (``MinedGenerator.sample`` +
  ``grid_png``, the job's model file): the ratio of the round's medians, HTTP over in-process;
* ``--clients`` concurrent socket clients (keep-alive, own seeds) against each two-process server, and one in-process
  loop doing the same requests: the ratio of requests/s, HTTP over in-process.

Figures are medians over rounds of each round's ratio.

Usage:  python benchmarks/serve_processes.py --before DIR [--rounds 7 --requests 400 --clients 8 --lone 100]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from benchmarks.batching import SocketClient, _concurrent, finished_job  # noqa: E402
from core.data import write_mnist_zip  # noqa: E402
from core.images import grid_png  # noqa: E402
from core.model_file import load_model  # noqa: E402
from tests.helpers import free_port, wait_ready  # noqa: E402


def _serve(checkout: Path, tmp: Path, name: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    """``minegan serve`` of ``checkout`` (its packages first on the path) on the shared database and storage."""
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / f"work-{name}"), "PYTHONPATH": str(checkout)}
    for k in ("MINEGAN_BROKER_URL", "OMP_NUM_THREADS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(k, None)
    cmd = [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())", "serve", "--port", str(port),
           "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, cwd=checkout, stdout=open(tmp / f"server-{name}.log", "wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", proc, tmp / f"server-{name}.log", timeout=120)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="a checkout of the version to compare with (its own code, this venv)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=400, help="requests per throughput measurement")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--lone", type=int, default=100, help="lone requests per server and round")
    ap.add_argument("--job-steps", type=int, default=20)
    a = ap.parse_args()
    before = Path(a.before).resolve()
    label = subprocess.run(["git", "-C", str(before), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="minegan-serve-processes-"))
    target = write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0)
    ports = {f"{v}-{w}": free_port() for v in ("before", "after") for w in (1, 2)}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, port in ports.items():
            version, workers = name.split("-")
            servers[name] = _serve(before if version == "before" else ROOT, tmp, name, port, int(workers))
        job_id = finished_job(ports["after-1"], target, a.job_steps)
        model, _ = load_model(tmp / "blobs" / "jobs" / job_id / "model.pt")

        def in_process(seed: int) -> bytes:
            return grid_png(model.sample(16, seed=seed))

        for port in ports.values():  # every process of every server loads the model
            _concurrent(port, "socket", job_id, a.clients, 4 * a.clients, 10**6)
        lone_ratio: dict[str, list[float]] = {"before": [], "after": []}
        lone_ms: dict[str, list[float]] = {"before": [], "after": [], "local": []}
        rps: dict[str, list[float]] = {"before": [], "after": [], "local": []}
        for rnd in range(a.rounds):
            seed0 = 1000 + rnd * a.requests
            order = ["before", "after", "local"]
            order = order[rnd % 3:] + order[: rnd % 3]
            for name in order:  # throughput
                time.sleep(0.2)
                if name == "local":
                    t0 = time.perf_counter()
                    for i in range(a.requests):
                        in_process(seed0 + i)
                    rps["local"].append(a.requests / (time.perf_counter() - t0))
                else:
                    rps[name].append(_concurrent(ports[f"{name}-2"], "socket", job_id, a.clients, a.requests, seed0)[0])
            clients = {v: SocketClient(ports[f"{v}-1"]) for v in ("before", "after")}
            times: dict[str, list[float]] = {"before": [], "after": [], "local": []}
            for b in range(a.lone // 10):  # lone requests, blocks of 10, rotating
                for name in order[b % 3:] + order[: b % 3]:
                    time.sleep(0.02)
                    for i in range(10):
                        t0 = time.perf_counter()
                        if name == "local":
                            in_process(i)
                        else:
                            clients[name].get(f"/jobs/{job_id}/sample?n=16&seed={i}")
                        times[name].append(time.perf_counter() - t0)
            for cl in clients.values():
                cl.close()
            med = {k: statistics.median(v) for k, v in times.items()}
            for v in ("before", "after"):
                lone_ratio[v].append(med[v] / med["local"])
            for k in lone_ms:
                lone_ms[k].append(1000 * med[k])
            print(f"round {rnd}: " + ", ".join(f"{k} {v[-1]:.0f} req/s" for k, v in rps.items())
                  + "; lone " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in lone_ms.items()), flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
        for proc in servers.values():
            proc.wait(60)
    tput = {v: statistics.median(x / y for x, y in zip(rps[v], rps["local"], strict=True)) for v in ("before", "after")}
    lone = {v: statistics.median(lone_ratio[v]) for v in ("before", "after")}
    command = "python benchmarks/serve_processes.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    lines = [
        "## API processes: a hand-made share of cores and connections against one SO_REUSEPORT listener per process (issue 34)",
        "",
        f"Command: `{command}` ({datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU; "
        f"`before` is commit {label}). Four embedded servers on one SQLite database and storage, on loopback: each version "
        f"with one API process and with two. `before`: several processes shared one socket, gave a lone render all "
        "cores and one thread each while another process rendered (a shared file of busy marks), and closed keep-alive "
        "connections of a process holding more than its share; the embedded worker ran in one of the API processes. "
        "`after`: each process its own `SO_REUSEPORT` listener and `cores / N` torch threads, nothing shared; jobs run "
        f"in a `minegan worker` process. {a.rounds} rounds, each: {a.clients} concurrent socket clients (keep-alive, "
        f"{a.requests} requests of `GET /jobs/{{id}}/sample?n=16`, PNG) against each two-process server and the same "
        f"requests in one in-process loop, then {a.lone} lone requests against each one-process server, in blocks of "
        "10 alternating with the same call in this process. Ratios: medians over rounds of the round's ratio.",
        "",
        "| measurement | before | after | goal |",
        "|---|---|---|---|",
        f"| lone `/jobs/{{id}}/sample?n=16`, HTTP / in-process (one API process) | {lone['before']:.2f}x | **{lone['after']:.2f}x** | at most 1.3x |",
        f"| {a.clients} clients, two API processes / the in-process loop (requests/s) | {tput['before']:.2f}x | "
        f"**{tput['after']:.2f}x** | at least 0.9x |",
        "",
        "Medians over rounds: lone request " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in lone_ms.items())
        + "; requests/s " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in rps.items()) + ".",
    ]
    update_section("serve_processes", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
