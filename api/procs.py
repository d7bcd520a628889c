"""Several API processes on one port (``minegan serve --workers N``, ``MINEGAN_API_WORKERS``).

Why processes. The event loop renders samples and speaks HTTP on one thread (api/compute.py), so one process
uses the second core of a 2-core machine only inside torch's forward pass, and its PNG encoding and HTTP work
leave that core to the clients. More threads do not help: their Python work and the loop's share the GIL (batched
forward passes on a thread of their own, pipelined with the loop, gave 0.61-0.73x of the in-process loop against
0.87-0.93x without; docs/benchmarks.md, "batching"). Processes do: with 8 concurrent clients of ``n=16``, 4 on each
of two single-threaded processes, 1.05-1.40x the in-process loop, where one process gave 0.79-1.10x (four
interleaved rounds).

How the processes divide the work:

* **The primary.** The process holding an exclusive lock on ``{work_dir}/api-primary.lock`` runs what must run
  once per server: the embedded worker, the stale-job sweeper, webhook deliveries and gRPC. The others answer
  HTTP. The lock goes with its process: when uvicorn replaces a process that died, the replacement (or another
  process, when it next starts) takes it.
* **Cores** (:class:`CoreShare`). Two processes that each run torch with all cores put two OpenMP teams on
  them, and each team's workers spin on a core the other needs: 56-100 requests/s where one thread each gave
  516-590 (same measurement). Teams that sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) cost a lone
  request's forward pass what the second thread gains (in-process ``n=16``: 2.25-3.0 ms against 1.35, one
  thread 2.26-2.36). So each process renders with all cores while no other process has rendered in the last
  :data:`LINGER_S`, and with one thread while another has: a lone request gets the forward pass it gets from a
  single process, and under load every process runs one thread on its own core.
* **Connections** (:class:`Connections`): spread evenly over the processes.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

SLOTS = 64  # most API processes that share cores on one machine
LINGER_S = 0.01  # a process that rendered this recently is still busy: under load it renders again within ~5 ms
RENDERING_S = 1.0  # the busy mark while a render runs (a render that takes longer overlaps another at worst)
_FMT = f"{SLOTS}d"
_CONNS = 8 * SLOTS  # offset of the second array: each process's open connections (as doubles)


def _lock(path: Path) -> IO[bytes] | None:
    """An exclusive, non-blocking ``flock`` on ``path`` (created if missing), held while the returned file is open;
    None when another process holds it. On a system without ``fcntl`` every caller gets it."""
    f = open(path, "a+b")  # noqa: SIM115 - kept open: the lock lives as long as the file object
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        return f
    except OSError:
        f.close()
        return None
    return f


def claim_primary(work_dir: str | Path) -> IO[bytes] | None:
    """Take the primary's lock (see the module's docstring); keep the returned file open while primary."""
    d = Path(work_dir)
    d.mkdir(parents=True, exist_ok=True)
    return _lock(d / "api-primary.lock")


class CoreShare:
    """Which API processes of this machine rendered recently, in a file of :data:`SLOTS` ``busy-until`` times.

    Each process owns one slot (the first whose lock file it can lock) and writes only there; readers tolerate a
    torn read, since the worst it can cause is one forward pass with the other thread count. The times are
    ``time.monotonic()``, CLOCK_MONOTONIC on Linux, which every process of a machine shares."""

    def __init__(self, directory: str | Path, all_threads: int) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.dir, self.all_threads = d, all_threads
        self._held: IO[bytes] | None = None
        for k in range(SLOTS):
            held = _lock(d / f"api-slot-{k}.lock")
            if held is not None:
                self.slot, self._held = k, held
                break
        else:
            raise RuntimeError(f"more than {SLOTS} API processes share {d}")
        path = d / "api-cores.bin"
        with open(path, "a+b") as f:
            if os.fstat(f.fileno()).st_size < 16 * SLOTS:
                f.truncate(16 * SLOTS)  # only grows a missing or short file; zeros mean "idle since boot"
        self._file = open(path, "r+b")  # noqa: SIM115 - mapped for the life of the process
        self._map = mmap.mmap(self._file.fileno(), 16 * SLOTS)
        self._mark(0.0)
        self.publish_connections(0)

    def _mark(self, until: float) -> None:
        struct.pack_into("d", self._map, 8 * self.slot, until)

    def others_busy(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        busy = struct.unpack_from(_FMT, self._map)
        return any(t > now for k, t in enumerate(busy) if k != self.slot)

    def begin(self) -> int:
        """Before a render: mark this process busy and return the torch thread count to render with."""
        now = time.monotonic()
        self._mark(now + RENDERING_S)
        return 1 if self.others_busy(now) else self.all_threads

    def end(self) -> None:
        """After a render: busy for :data:`LINGER_S` more, the gap between renders of a loaded process."""
        self._mark(time.monotonic() + LINGER_S)

    def live(self) -> int:
        """How many processes hold a slot now (this one included): a slot's lock is free once its process is gone."""
        held = 0
        for path in self.dir.glob("api-slot-*.lock"):
            if path.name == f"api-slot-{self.slot}.lock":
                held += 1
                continue
            probe = _lock(path)
            if probe is None:
                held += 1
            else:
                probe.close()
        return held

    def publish_connections(self, n: int) -> None:
        struct.pack_into("d", self._map, _CONNS + 8 * self.slot, float(n))

    def total_connections(self) -> float:
        return sum(struct.unpack_from(_FMT, self._map, _CONNS))

    def close(self) -> None:
        self._mark(0.0)
        self.publish_connections(0)
        self._map.close()
        self._file.close()
        if self._held is not None:
            self._held.close()


class Connections:
    """Keeps the HTTP connections spread evenly over the processes.

    The processes share one listening socket, and whichever is awake first accepts: a burst of new connections often
    lands on one process (all 8 of ``wrk``'s, in 3 of 6 tries), and on keep-alive connections it stays there. That
    process then serves everyone with one core while the other idles (342-416 requests/s against 552-609 with 4 and
    4, or 3 and 5). So each process counts its connections (the clients it heard from in the last
    :data:`ACTIVE_S`) in the shared file, and a process that has more than its share, ``ceil(total / processes)``,
    answers the current request with ``Connection: close``. The client (HTTP/1.1 requires it to) opens a new
    connection, which the least busy process, the one waiting in ``accept``, most likely takes. One process, or
    connections already spread, never see a close."""

    ACTIVE_S = 1.0

    def __init__(self, share: CoreShare, processes: int) -> None:
        self.share = share
        self.processes = processes  # the processes alive, counted again every ACTIVE_S (one that died is not waited for)
        self._seen: dict[tuple[object, ...], float] = {}
        self._pruned = self._counted = 0.0
        self.closed = 0  # connections this process asked to close (tests read it)

    def should_close(self, client: tuple[object, ...]) -> bool:
        """Note a request from ``client`` (host, port: one connection); True to close its connection after the answer."""
        now = time.monotonic()
        self._seen[client] = now
        if now - self._pruned > 0.1:
            self._pruned = now
            for c in [c for c, t in self._seen.items() if now - t > self.ACTIVE_S]:
                del self._seen[c]
        if now - self._counted > self.ACTIVE_S:
            self._counted = now
            self.processes = self.share.live()
        mine = len(self._seen)
        self.share.publish_connections(mine)
        if mine <= 1 or mine <= -(-self.share.total_connections() // self.processes):
            return False
        del self._seen[client]
        self.share.publish_connections(mine - 1)
        self.closed += 1
        return True


_active: CoreShare | None = None
_threads_now = 0
_connections: Connections | None = None


def activate(share: CoreShare | None, processes: int = 1) -> None:
    """Share the cores and the connections with this machine's other API processes (``None``: a single process)."""
    global _active, _threads_now, _connections
    if _active is not None and _active is not share:
        _active.close()
    _active, _threads_now = share, 0
    _connections = Connections(share, processes) if share is not None and processes > 1 else None


class BalanceConnections:
    """ASGI middleware: ``Connection: close`` on the answer when this process has more than its share of connections
    (:class:`Connections`); nothing at all with a single process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conns, client = _connections, scope.get("client")
        if conns is None or scope["type"] != "http" or not client or not conns.should_close(tuple(client)):
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)


def render_begin() -> None:
    """On the rendering thread, just before a forward pass: pick its torch thread count (:meth:`CoreShare.begin`)."""
    global _threads_now
    if _active is None:
        return
    n = _active.begin()
    if n != _threads_now:
        import torch

        torch.set_num_threads(n)
        _threads_now = n


def render_end() -> None:
    if _active is not None:
        _active.end()


@contextmanager
def rendering() -> Iterator[None]:
    """Around a forward pass on the rendering thread: :func:`render_begin` before, :func:`render_end` after."""
    render_begin()
    try:
        yield
    finally:
        render_end()
