"""``minegan serve`` and ``minegan worker``: the processes of a server.

``minegan serve`` runs the API: one process (the default), or ``--workers N`` processes that each open their own
listening socket on the port with ``SO_REUSEPORT``, so the kernel spreads new connections over them. With several
processes each renders with ``cores / N`` torch threads (``OMP_NUM_THREADS``, unless set), their ``/metrics`` are
summed from files (``PROMETHEUS_MULTIPROC_DIR``), and a process that dies is started again. In embedded mode
(no ``MINEGAN_BROKER_URL``) it also starts ``minegan worker`` as a child process and stops it on the way out;
in service mode the worker is a service of its own (docker-compose.yml).

``minegan worker`` runs jobs, the stale-job sweeper and webhook delivery (worker/housekeeping.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from store.settings import Settings

log = logging.getLogger("minegan.serve")
_CTX = multiprocessing.get_context("spawn")
QUICK_DEATH_S = 10.0  # an API process that dies this soon after its start is not started again: the server stops


def listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: one per API process, all on the same port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _exit_with_parent(parent: int) -> None:
    """Ask this process to stop (uvicorn's graceful SIGTERM) once ``parent`` is gone, however it ended."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _api_process(host: str, port: int, opts: dict[str, Any], parent: int) -> None:
    """One API process of several: its own listener, uvicorn serving the app that the environment describes."""
    import uvicorn

    threading.Thread(target=_exit_with_parent, args=(parent,), name="minegan-parent-watch", daemon=True).start()
    sock = listener(host, port)
    uvicorn.Server(uvicorn.Config("api.main:served_app", factory=True, **opts)).run(sockets=[sock])


def _processes(n: int, host: str, port: int, opts: dict[str, Any]) -> int:
    """Run ``n`` API processes until SIGINT or SIGTERM; one that dies is started again."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start() -> tuple[multiprocessing.process.BaseProcess, float]:
        p = _CTX.Process(target=_api_process, args=(host, port, opts, os.getpid()), name="minegan-api")
        p.start()
        return p, time.monotonic()

    procs = [start() for _ in range(n)]
    code = 0
    while not stopping:
        time.sleep(0.2)
        for i, (p, started) in enumerate(procs):
            if p.is_alive():
                continue
            if time.monotonic() - started < QUICK_DEATH_S:
                log.error("an API process exited with code %s right after its start; stopping", p.exitcode)
                stopping.append(0)
                code = 1
                break
            log.error("API process %s exited with code %s; starting another", p.pid, p.exitcode)
            procs[i] = start()
    for p, _ in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
    for p, _ in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    return code


def serve(settings: Settings, host: str, port: int, workers: int, log_level: int) -> int:
    """``minegan serve``: the API (one process or ``workers``) and, in embedded mode, ``minegan worker`` beside it."""
    import uvicorn

    from api.main import create_app
    from store.db import upgrade

    upgrade(settings.database_url)  # once, here: processes migrating one new database at once would collide
    # uvloop when importable (a dependency), httptools with a limit on the head (api/http.py, 431); no per-request
    # access log; log_config=None: uvicorn's own records go through the handler the command set up
    opts: dict[str, Any] = dict(log_level="warning", access_log=False, loop="auto", http="api.http:LimitedHttpToolsProtocol",
                                log_config=None, timeout_keep_alive=settings.http_keep_alive_s)
    env = {"MINEGAN_RUN_WORKER": "false", "MINEGAN_SERVE_LOG_LEVEL": str(log_level)}
    if settings.grpc_port:
        env.update(MINEGAN_GRPC_PORT=str(settings.grpc_port), MINEGAN_GRPC_HOST=settings.grpc_host)
    metrics_dir = None
    if workers > 1:
        env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers)))
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # one /metrics for all processes (api/metrics.py)
            metrics_dir = Path(settings.work_dir).resolve() / f"metrics-{os.getpid()}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.update(env)  # the worker's and the API processes' settings (they read the environment)
    worker = None
    if settings.embedded:
        worker_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # the API's metrics files only
        worker = subprocess.Popen([sys.executable, "-m", "cli.main", *(["-v"] if log_level <= logging.INFO else []), "worker",
                                   "--parent", str(os.getpid())], env=worker_env)  # it also stops if this process is killed
    try:
        if workers == 1:
            uvicorn.run(create_app(settings.model_copy(update={"run_worker": False})), host=host, port=port, **opts)
            return 0
        return _processes(workers, host, port, opts)
    finally:
        if worker is not None:
            if worker.poll() is None:
                worker.terminate()  # a running job stops at its next step and stays queued
            try:
                worker.wait(70)
            except subprocess.TimeoutExpired:
                worker.kill()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
