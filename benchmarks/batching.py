"""Dynamic batching of sampling (issue 20) -> docs/benchmarks.md section "batching".

Two embedded servers (``minegan serve``) on the same database and storage, one with batching on (the default
2 ms window) and one with it off (``MINEGAN_SAMPLE_BATCH_WINDOW_MS=0``: the service before this change), serve the
same finished ``mnist-no-9`` minegan++ job. In one run, interleaved by rounds, so a shared machine's drift hits all
alike, it measures:

  * throughput: ``--clients`` concurrent clients, each on its own keep-alive connection sending
    ``GET /jobs/{id}/sample?n=16`` with its own seeds, against each server, and one in-process loop doing the same
    work (``MinedGenerator.sample`` + ``grid_png``), ``--requests`` requests a round each;
  * the latency of a lone request (one client, one request at a time) against each server.

Every concurrent answer of the batching server is compared byte for byte with the same request sent alone to the
server without batching. Two clients: the minimal socket client of benchmarks/sampling.py (what the service costs
with the least client work) and httpx (a typical Python client), both in threads of this process.

``--workers N`` starts the server with batching as ``minegan serve --workers N`` (cli/serve.py); the one without stays
a single process.

Usage: python benchmarks/batching.py [--rounds 7 --requests 400 --clients 8 --lone 200 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from core.data import write_mnist_zip  # noqa: E402
from core.images import grid_png  # noqa: E402
from core.model_file import load_model  # noqa: E402
from tests.helpers import free_port, wait_ready  # noqa: E402

BIN = Path(sys.executable).parent


class SocketClient:
    """The thinnest HTTP/1.1 client: one keep-alive TCP socket, a fixed request line, Content-Length framing. An answer
    with ``Connection: close`` ends the connection, and the next request opens a new one, as HTTP/1.1 asks."""

    def __init__(self, port: int, headers: str = "") -> None:
        self.port, self.headers = port, headers  # extra header lines, each ending in \r\n
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = bytearray()

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.pending.extend(chunk)

    def get(self, path: str) -> bytes:
        if self.sock is None:
            self._connect()
            self.reconnects += 1
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.headers}\r\n".encode())
        while (end := self.pending.find(b"\r\n\r\n")) < 0:
            self._more()
        head = bytes(self.pending[:end]).split(b"\r\n")
        if head[0].split(b" ")[1] != b"200":
            raise RuntimeError(head[0].decode())
        length = next(int(h.split(b":", 1)[1]) for h in head[1:] if h.lower().startswith(b"content-length:"))
        while len(self.pending) < end + 4 + length:
            self._more()
        body = bytes(self.pending[end + 4 : end + 4 + length])
        del self.pending[: end + 4 + length]
        if any(h.lower().replace(b" ", b"") == b"connection:close" for h in head[1:]):
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
        return body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class HttpxClient:
    def __init__(self, port: int) -> None:
        self.c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def get(self, path: str) -> bytes:
        r = self.c.get(path)
        r.raise_for_status()
        return r.content

    def close(self) -> None:
        self.c.close()


CLIENTS: dict[str, Callable[[int], SocketClient | HttpxClient]] = {"socket": SocketClient, "httpx": HttpxClient}


def _serve(tmp: Path, port: int, extra: dict[str, str], args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / "work"), **extra}
    env.pop("MINEGAN_BROKER_URL", None)
    proc = subprocess.Popen([str(BIN / "minegan"), "serve", "--port", str(port), *args], env=env,
                            stdout=open(tmp / f"server-{port}.log", "wb"), stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}", proc, tmp / f"server-{port}.log", timeout=120)
    return proc


def finished_job(port: int, target: Path, steps: int) -> str:
    """A ``minegan++`` job on ``mnist-no-9`` (``steps`` mining + ``steps`` finetuning) run to its end; its id."""
    spec = {"sources": ["mnist-no-9"], "method": "minegan++", "mining_steps": steps, "finetune_steps": steps, "seed": 0}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
        job = c.post("/jobs", files={"images": ("t.zip", target.read_bytes(), "application/zip")}, data={"spec": json.dumps(spec)}).json()
        while (j := c.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "canceled"):
            time.sleep(0.2)
    assert j["status"] == "succeeded", j
    return str(j["id"])


def _concurrent(port: int, kind: str, job: str, clients: int, total: int, seed0: int) -> tuple[float, dict[int, bytes]]:
    """``total`` requests from ``clients`` concurrent clients; returns (requests/s, seed -> body)."""
    per = total // clients
    conns = [CLIENTS[kind](port) for _ in range(clients)]
    bodies: dict[int, bytes] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def loop(k: int) -> None:
        start.wait()
        try:
            for i in range(per):
                s = seed0 + k * per + i
                bodies[s] = conns[k].get(f"/jobs/{job}/sample?n=16&seed={s}")
        except BaseException as e:  # noqa: BLE001 - reported after the run
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    rps = per * clients / (time.perf_counter() - t0)
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return rps, bodies


def _wrk(port: int, job: str, clients: int, seconds: float, seed0: int) -> float:
    """Requests/s of ``wrk`` (a C load generator, one thread, ``clients`` keep-alive connections, own seeds)."""
    script = Path(tempfile.mkdtemp()) / "seeds.lua"
    script.write_text(f"counter = {seed0}\nrequest = function()\n  counter = counter + 1\n"
                      f"  return wrk.format(\"GET\", \"/jobs/{job}/sample?n=16&seed=\" .. counter)\nend\n")
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{round(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(out)
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec:")))


def _batch_metrics(port: int) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
        if fam.name == "minegan_sample_batch_requests":
            v = {s.name: s.value for s in fam.samples}
            return v["minegan_sample_batch_requests_count"], v["minegan_sample_batch_requests_sum"]
    return 0.0, 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=400, help="requests per throughput measurement")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--lone", type=int, default=200, help="lone requests per server and round")
    ap.add_argument("--job-steps", type=int, default=20)
    ap.add_argument("--wrk-seconds", type=int, default=2, help="length of a wrk measurement (wrk rows when wrk is installed)")
    ap.add_argument("--on-env", action="append", default=[], metavar="K=V",
                    help="more environment for the server with batching on (e.g. MINEGAN_SAMPLE_BATCH_MAX_IMAGES=32)")
    ap.add_argument("--workers", type=int, default=1, help="API processes of the server with batching on (minegan serve --workers)")
    ap.add_argument("--off-env", action="append", default=[], metavar="K=V",
                    help="more environment for the server with batching off")
    a = ap.parse_args()
    command = "python benchmarks/batching.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="minegan-batching-"))
    target = write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0)
    on_port, off_port = free_port(), free_port()
    on_env = {"MINEGAN_SAMPLE_BATCH_WINDOW_MS": "2", **dict(kv.split("=", 1) for kv in a.on_env)}
    on = _serve(tmp, on_port, on_env, ("--workers", str(a.workers)))
    off = None
    try:
        job_id = finished_job(on_port, target, a.job_steps)
        # the same database and storage, batching off: the service before issue 20
        off = _serve(tmp, off_port, {"MINEGAN_SAMPLE_BATCH_WINDOW_MS": "0", **dict(kv.split("=", 1) for kv in a.off_env)})
        model, _ = load_model(tmp / "blobs" / "jobs" / job_id / "model.pt")

        def in_process(seed: int) -> bytes:
            return grid_png(model.sample(16, seed=seed))

        from api.batching import forward_cost

        costs = forward_cost(model.eval(), [16, 32, 64, 128], reps=20)  # what the batcher's sizing sees, on this thread
        ports = {"on": on_port, "off": off_port}
        for p in ports.values():  # load the model into each server's cache: every process's, under the same concurrent load
            SocketClient(p).get(f"/jobs/{job_id}/sample?n=16&seed=0")
            _concurrent(p, "socket", job_id, a.clients, 8 * a.clients, 10**6)  # (each process also times its batch sizes)
        in_process(0)
        rps: dict[str, list[float]] = {}
        lone: dict[str, list[float]] = {"on": [], "off": []}
        lone_by_round: dict[str, list[float]] = {"on": [], "off": []}
        mismatches = checked = 0
        batches0 = _batch_metrics(on_port)
        for rnd in range(a.rounds):
            seed0 = 1000 + rnd * a.requests
            order = [("on", "socket"), ("off", "socket"), ("local", ""), ("on", "httpx"), ("off", "httpx")]
            if shutil.which("wrk"):
                order += [("on", "wrk"), ("off", "wrk")]
            for name, kind in order[rnd % len(order):] + order[: rnd % len(order)]:
                time.sleep(0.2)
                if name == "local":
                    t0 = time.perf_counter()
                    for i in range(a.requests):
                        in_process(seed0 + i)
                    rps.setdefault("local", []).append(a.requests / (time.perf_counter() - t0))
                    continue
                if kind == "wrk":
                    rps.setdefault(f"{name}-wrk", []).append(_wrk(ports[name], job_id, a.clients, a.wrk_seconds, seed0))
                    continue
                r, bodies = _concurrent(ports[name], kind, job_id, a.clients, a.requests, seed0)
                rps.setdefault(f"{name}-{kind}", []).append(r)
                if name == "on" and kind == "socket":  # the batched answers against the same requests alone, unbatched
                    alone = SocketClient(off_port)
                    for s in list(bodies)[:: max(1, len(bodies) // 50)]:
                        checked += 1
                        mismatches += alone.get(f"/jobs/{job_id}/sample?n=16&seed={s}") != bodies[s]
                    alone.close()
            # lone requests, alternating servers in blocks of 10
            clients = {k: SocketClient(p) for k, p in ports.items()}
            per_round: dict[str, list[float]] = {"on": [], "off": []}
            for b in range(a.lone // 10):
                for name in (("on", "off") if b % 2 == 0 else ("off", "on")):
                    time.sleep(0.02)
                    for i in range(10):
                        t0 = time.perf_counter()
                        clients[name].get(f"/jobs/{job_id}/sample?n=16&seed={i}")
                        per_round[name].append(time.perf_counter() - t0)
            for k, cl in clients.items():
                cl.close()
                lone[k] += per_round[k]
                lone_by_round[k].append(statistics.median(per_round[k]))
            print(f"round {rnd}: " + ", ".join(f"{k} {v[-1]:.0f} req/s" for k, v in rps.items())
                  + f"; lone p50 on {1000 * lone_by_round['on'][-1]:.2f} ms, off {1000 * lone_by_round['off'][-1]:.2f} ms", flush=True)
        batches1 = _batch_metrics(on_port)
    finally:
        for proc in (on, off):
            if proc is not None:
                proc.terminate()
                proc.wait(20)
    med = {k: statistics.median(v) for k, v in rps.items()}
    passes, served = batches1[0] - batches0[0], batches1[1] - batches0[1]
    lone_ratio = statistics.median(x / y for x, y in zip(lone_by_round["on"], lone_by_round["off"], strict=True))
    ratio = {k: statistics.median(x / y for x, y in zip(rps[k], rps["local"], strict=True)) for k in rps if k != "local"}
    p50 = {k: statistics.median(v) for k, v in lone.items()}
    p99 = {k: sorted(v)[int(0.99 * (len(v) - 1))] for k, v in lone.items()}
    lines = [
        "## Dynamic batching of sampling (issue 20)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU. Two embedded servers (`minegan serve`) on "
        "the same SQLite database and storage on loopback, one with batching (`MINEGAN_SAMPLE_BATCH_WINDOW_MS=2`, the "
        "default" + (f"; `--workers {a.workers}`: {a.workers} API processes on the port, cli/serve.py"
                     if a.workers > 1 else "")
        + (f"; here also {', '.join(f'`{kv}`' for kv in a.on_env)}" if a.on_env else "")
        + ") and one without (`0`, the service before this change"
        + (f"; here also {', '.join(f'`{kv}`' for kv in a.off_env)}" if a.off_env else "")
        + ", one process), and the clients, all on this machine's cores. "
        f"{a.rounds} rounds; each runs every throughput variant once ({a.requests} requests of "
        f"`GET /jobs/{{id}}/sample?n=16`, PNG, own seeds, {a.clients} concurrent clients on keep-alive connections; the "
        "order rotates per round), then lone requests alternating between the servers in blocks of 10. Ratios are "
        "medians over rounds of the same round's figures.",
        "",
        "| throughput | req/s (median of rounds) | ratio to the in-process loop (median over rounds) |",
        "|---|---|---|",
        f"| one in-process loop (`MinedGenerator.sample(16)` + `grid_png`) | {med['local']:.0f} | 1.00 |",
    ]
    for name in ("on-socket", "off-socket", "on-httpx", "off-httpx", "on-wrk", "off-wrk"):
        if name not in rps:
            continue
        server, kind = name.split("-")
        who = {"socket": "socket clients (Python threads)", "httpx": "httpx clients (Python threads)",
               "wrk": "connections of `wrk` (C, one thread)"}[kind]
        label = f"{a.clients} concurrent {who}, batching {server}"
        lines.append(f"| {label} | {med[name]:.0f} | {'**' if server == 'on' else ''}{ratio[name]:.2f}{'**' if server == 'on' else ''} |")
    lines += [
        "",
        "| lone request, socket client | p50 | p99 |",
        "|---|---|---|",
        f"| batching on | {1000 * p50['on']:.2f} ms | {1000 * p99['on']:.2f} ms |",
        f"| batching off | {1000 * p50['off']:.2f} ms | {1000 * p99['off']:.2f} ms |",
        f"| on / off, median over rounds of the round medians | **{lone_ratio:.3f}** | |",
        "",
        f"Batching server, all rounds: {served:.0f} sample requests through the batcher in {passes:.0f} forward passes "
        f"({served / max(passes, 1):.2f} requests per pass on average, lone requests included). "
        f"{checked} of its concurrent answers were compared with the same request sent alone to the server without "
        f"batching: {mismatches} differed.",
        "",
        "One forward pass of this generator and miner, in this process (2 threads), per image by batch size: "
        + ", ".join(f"{k} images {1000 * v:.3f} ms" for k, v in costs.items())
        + ". The batcher times this once per model and request size and batches only up to the size that costs least "
        "per image (within 5 %).",
    ]
    print("\n".join(lines))
    print(f"wrote {update_section('batching', chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
