"""Shared helpers for service tests: a tiny source model in a temporary zoo, target zips, polling."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from core import checkpoints, zoo
from core.images import png_bytes, to_uint8
from tests.conftest import tiny_source


def write_tiny_zoo(weights_dir: Path, name: str = "tiny-src", n_classes: int = 0, description: str = "tiny test source") -> Path:
    src = tiny_source(width=4, z_dim=8, name=name, n_classes=n_classes)
    return checkpoints.save(zoo.source_checkpoint(name, src.G, src.D, {"description": description}),
                            weights_dir / f"{name}.pt")


def target_zip_bytes(n: int = 16) -> bytes:
    from tests.conftest import blobs_target

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, img in enumerate(to_uint8(blobs_target(n))):
            zf.writestr(f"t{i:03d}.png", png_bytes(img))
    return buf.getvalue()


TINY_SPEC: dict[str, Any] = {"sources": ["tiny-src"], "method": "minegan++", "mining_steps": 3, "finetune_steps": 3,
                             "batch_size": 8, "seed": 0, "options": {"n_critic": 1}}


def wait_for(client: Any, job_id: str, timeout: float = 120.0, until: tuple[str, ...] = ("succeeded", "failed", "canceled"),
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/jobs/{job_id}", headers=headers).json()
        if body["status"] in until:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout}s: {body}")


@contextlib.contextmanager
def app_client(tmp: Path, monkeypatch: Any, **settings: Any) -> Iterator[Any]:
    """The embedded app in-process (a TestClient) on ``tmp``, with a tiny source ``tiny-src`` in its zoo."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import Settings

    write_tiny_zoo(tmp / "zoo")
    monkeypatch.setattr("core.zoo.WEIGHTS_DIR", tmp / "zoo")
    cfg = Settings(database_url=f"sqlite:///{tmp}/db.sqlite", storage_dir=str(tmp / "blobs"), work_dir=str(tmp / "work"),
                   **{"progress_interval_s": 0, **settings})
    with TestClient(create_app(cfg)) as c:
        yield c


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@contextlib.contextmanager
def embedded_server(tmp: Path, **env_extra: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``minegan serve`` (embedded: SQLite, local blobs, built-in worker) as a subprocess on a free loopback
    port, with a tiny source ``tiny-src`` in its models dir; yields (url, env)."""
    write_tiny_zoo(tmp / "models", "tiny-src")
    port = free_port()
    env = {**os.environ, "MINEGAN_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite", "MINEGAN_STORAGE_DIR": str(tmp / "blobs"),
           "MINEGAN_WORK_DIR": str(tmp / "work"), "MINEGAN_MODELS_DIR": str(tmp / "models"), "MINEGAN_PROGRESS_INTERVAL_S": "0",
           "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("MINEGAN_BROKER_URL", None)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "minegan"), "keys", "list"], env=env, capture_output=True, check=True)  # migrate first
    proc = subprocess.Popen([str(bin_dir / "minegan"), "serve", "--port", str(port)], env=env, stdout=open(tmp / "log", "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, tmp / "log")
        yield url, env
    finally:
        proc.terminate()
        proc.wait(20)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:  # type: ignore[type-arg]
    """Until ``url/readyz`` answers 200; fails with the server's log if it exits or takes longer than ``timeout``."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.25)


class Receiver:
    """A webhook endpoint on loopback: 500 to the first try of each event id, 200 after; keeps what it got."""

    def __init__(self) -> None:
        self.tries: list[tuple[dict[str, str], bytes, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers["X-Minegan-Event-Id"]
                status = 200 if any(h["X-Minegan-Event-Id"] == event_id for h, _, _ in outer.tries) else 500
                outer.tries.append(({k: v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b, s in self.tries if s == 200]

    def completed_once(self, secret: str, job_id: str) -> dict[str, Any]:
        """Check every accepted delivery's signature; the job's completed event must have been accepted exactly once."""
        import hashlib
        import hmac
        import json

        done = []
        for h, body in self.accepted():
            want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(h["X-Minegan-Signature"], want), h
            event = json.loads(body)
            if event["job_id"] == job_id and event["type"] == "completed":
                done.append(event)
        assert len(done) == 1, done
        return done[0]  # type: ignore[no-any-return]
