"""`minegan serve` closes an idle keep-alive connection after MINEGAN_HTTP_KEEP_ALIVE_S, and not before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port, wait_ready


def _get(sock: socket.socket) -> bytes:
    """One GET /healthz on the connection: its status line, read with its whole body; b"" when the server has closed
    the connection."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            if not (chunk := sock.recv(1 << 16)):
                return b""
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(1 << 16)
        return head.split(b"\r\n")[0]
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_idle_keep_alive_connections_close_after_the_setting(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINEGAN_") or k == "MINEGAN_CACHE"}
    env |= {"MINEGAN_HTTP_KEEP_ALIVE_S": "2", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "minegan"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / "serve.log")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _get(sock) == b"HTTP/1.1 200 OK"
            time.sleep(0.5)  # idle, but shorter than the setting: still open
            assert _get(sock) == b"HTTP/1.1 200 OK"
            time.sleep(4)  # idle longer than the setting: the server has closed it
            assert _get(sock) == b""
    finally:
        proc.terminate()
        proc.wait(30)
