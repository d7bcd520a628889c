"""Where the API process runs torch: sampling on the event-loop thread, everything else on one helper thread.

The constraint is OpenMP. Each OS thread that runs multi-threaded torch ops owns an OpenMP team, and
libgomp counts the threads of all teams. Once that count is above the number of CPUs it stops spinning
between parallel regions, and every op of a forward pass then wakes its team through a futex, which made
sampling in the server markedly slower than in a plain process (docs/benchmarks.md, "Design figures").

So there is exactly one team, and it belongs to the thread that renders samples:

* :func:`sample_on_loop` runs sampling (the generator's forward passes of an already loaded model) on the
  calling thread, which is the event loop, and the route encodes the PNG there too. This is the request
  users repeat most. Rendering there saves the two thread hops of an executor round trip and the cost of
  waking a second thread. So that one large request cannot stall the server, the forward passes run in
  pieces of at most :data:`CHUNK_VALUES` output values (a few milliseconds each) and the loop serves other
  requests between pieces. Encoding a result of one piece or less stays on the loop; a larger one goes to
  the helper thread.
* :func:`run_check` decodes and checks uploaded target zips in a separate process in the idle scheduling class. That work
  is mostly Python (zip entries, limits, image conversions): in a thread of this process it would hold the
  GIL, and the event loop would wait for it after every torch op of a forward pass (up to the 5 ms switch
  interval each), which is where sampling's tail went while uploads were checked (benchmarks/upload_sampling.py).
* :func:`run_torch` runs the rest (loading a finished job's model from storage, checking an uploaded
  generator, the target grid) on one helper thread whose torch
  runs with a single intra-op thread: it never starts OpenMP worker threads, so it adds no second team, and
  these calls (up to seconds) never block the event loop. Starlette's threadpool and the event loop never
  run those.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, Protocol, TypeVar

import torch

from api.batching import SampleBatcher

P = ParamSpec("P")
T = TypeVar("T")

# torch's default intra-op thread count, read before anything sets it; the rendering thread gets it back
_RENDER_THREADS = torch.get_num_threads()
_claimed = threading.local()


def _single_threaded() -> None:
    """Helper-thread initializer. ``torch.get_num_threads()`` first: it makes torch initialise this thread
    now, so its lazy per-thread initialisation cannot later reset the count to the process default."""
    torch.get_num_threads()
    torch.set_num_threads(1)
    background_priority()


# the lowest priority there is: with the render thread at MINEGAN_RENDER_NICE, 19 rather than 10 took the p99 of
# /sample?n=16 during 10 concurrent 5 MB uploads from 24-25 ms to 19-20 ms (docs/benchmarks.md, "upload_sampling")
BACKGROUND_NICE = 19
_niced = threading.local()


def background_priority() -> None:
    """Give the calling OS thread a lower CPU priority (Linux: a thread has its own nice value), once per thread.
    The threads that store uploads, decode target zips and load models call it, so that when the CPUs are
    short the scheduler runs the event-loop thread, which renders samples, before them
    (benchmarks/upload_sampling.py). Raising one's own nice value needs no privilege; elsewhere it does nothing."""
    if getattr(_niced, "done", False):
        return
    _niced.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), BACKGROUND_NICE))
    except (AttributeError, OSError):  # not Linux, or not allowed: the same work at the same priority
        pass


_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minegan-torch", initializer=_single_threaded)


async def run_torch(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on the single-threaded torch helper and await it (exceptions propagate)."""
    claim_render_team()  # the loop thread owns the team before the helper first sets torch's count to 1
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, functools.partial(fn, *args, **kwargs))


log = logging.getLogger(__name__)
_CHECKER: ProcessPoolExecutor | None = None
_checker_lock = threading.Lock()


def _checker_init(parent: int) -> None:
    """Checker-process initializer: the idle scheduling class for the whole process (:func:`idle_priority`), one torch
    thread, and an end with its parent (``parent``: the API process's id, passed in, since it may be gone before this runs)."""
    idle_priority()
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="minegan-checker-parent", daemon=True).start()


def idle_priority() -> None:
    """Put the calling thread (and the threads it starts later) in Linux's ``SCHED_IDLE`` class: it runs on a CPU that
    nothing else wants, and a waking thread of the normal class takes the CPU from it at once. At nice 19 (still the
    normal class) the scheduler may let it finish its slice first: while one tenant's 252-megapixel uploads were being
    checked, another tenant's ``/sample?n=16`` p99 was 3.4-3.7x its idle p99 with the checker at nice 19 and 0.9-1.3x
    with it in ``SCHED_IDLE`` (two interleaved pairs of ``benchmarks/tenant_pressure.py --rounds 5``). The price: under
    renders that keep every CPU busy, a check waits for a free moment. Entering the class needs no privilege; where it
    does not exist, nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        background_priority()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this process once the API process that started it is gone. A pool worker does not notice by itself: it
    waits on the call queue, and a spawned worker holds that queue's writing end as well, so the read never sees EOF.
    Without this, every API process that ended, killed or stopped, left its checker running (about 350 MB each). The
    checker is shared by every app of the process (tests start many), so it ends with the process, not with an app."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


def _checker() -> ProcessPoolExecutor:
    global _CHECKER
    with _checker_lock:
        if _CHECKER is None:  # spawn: a fresh interpreter, never a fork of this threaded one
            _CHECKER = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_checker_init,
                                           initargs=(os.getpid(),))
        return _CHECKER


def start_checker() -> None:
    """Start the checker process now (the app's startup), so that the first upload does not wait for its imports."""
    _checker().submit(int)


async def run_check(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the module-level function ``fn`` in the checker process and await it: arguments and result are pickled,
    so it suits a few MB of upload and a small report. Its exceptions propagate when they pickle (plain ones do).
    A checker that died (killed, out of memory) is replaced and the call runs once more."""
    loop = asyncio.get_running_loop()
    for attempt in (0, 1):
        pool = _checker()
        try:
            return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))
        except BrokenProcessPool:
            global _CHECKER
            with _checker_lock:
                if _CHECKER is pool:  # not one that a concurrent call has already started in its place
                    _CHECKER = None
            if attempt:
                raise
            log.warning("the upload checker process died; starting another")
    raise AssertionError("unreachable")


# One piece of a render: 65536 output values (83 MNIST images of 28x28, 5 RGB 64x64 images; at least 4 images).
CHUNK_VALUES = 65536


class Sampler(Protocol):
    @property
    def values_per_image(self) -> int: ...

    def sample_chunks(self, n: int, seed: int = 0, chunk: int = 256) -> Iterator[torch.Tensor]: ...


async def sample_on_loop(model: Sampler, n: int, seed: int, batcher: SampleBatcher | None = None) -> torch.Tensor:
    """``model.sample(n, seed)``, computed here on the event-loop thread with torch's default number of
    threads, in pieces of at most :data:`CHUNK_VALUES` values, yielding to the loop between pieces. Only for
    models already in memory; loads, uploads and anything else that can take long go to :func:`run_torch`.
    With a ``batcher``, a request it takes may share its forward pass with concurrent ones (api/batching.py)."""
    claim_render_team()
    chunk = max(4, CHUNK_VALUES // max(1, model.values_per_image))
    if batcher is not None and batcher.eligible(model, n, chunk):
        return await batcher.sample(model, n, seed, chunk)  # type: ignore[arg-type]
    parts: list[torch.Tensor] = []
    pieces = model.sample_chunks(n, seed, chunk=chunk)
    while True:
        if parts:
            await asyncio.sleep(0)  # let the loop serve others between pieces
        part = next(pieces, None)
        if part is None:
            break
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.empty(0)


def on_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run short torch work (encoding a rendered grid) here, on the event-loop thread that owns the team."""
    claim_render_team()
    return fn(*args, **kwargs)


class RenderPriority:
    """The nice value of the thread that renders samples and of its OpenMP team (``MINEGAN_RENDER_NICE``; 0: the
    process's). Below 0 it runs renders before the other work of the machine: the object store, the database, the
    uploads' clients, training. On a 2-core machine storing 10 concurrent 5 MB uploads, nice -5 took the p99 of
    ``/sample?n=16`` from 35-45 ms to 17-22 ms (three interleaved pairs; docs/benchmarks.md, "upload_sampling"). The
    value is a privilege, not a speed-up: -10 and -15 measured no better than -5. A value below 0 needs
    CAP_SYS_NICE or a matching RLIMIT_NICE (docker-compose.yml gives the API ``cap_add: [SYS_NICE]``); without it
    the renders keep the process's priority and the API says so once at startup. Threads that the loop starts later
    inherit the value (Linux keeps it per thread): Starlette's threadpool, which runs the short database calls;
    the threads that store uploads and load models, and the checker process, lower themselves to
    :data:`BACKGROUND_NICE` (:func:`background_priority`). The embedded worker starts before this is set, so
    training keeps the process's priority."""

    nice = 0
    applied: int | None = None  # the value the render thread got (None: not set)


def _apply_render_priority() -> None:
    if RenderPriority.nice == 0:
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, RenderPriority.nice)
        RenderPriority.applied = RenderPriority.nice
    except (AttributeError, OSError) as exc:  # not Linux, or no CAP_SYS_NICE / RLIMIT_NICE for a value below 0
        log.warning("MINEGAN_RENDER_NICE=%d not applied (%s): samples render at the process's priority", RenderPriority.nice, exc)


def claim_render_team() -> None:
    """Make the calling thread (the event loop) the one that renders: its priority (:class:`RenderPriority`) first,
    then torch's default thread count, so that the OpenMP team its first parallel region starts inherits both. The
    app calls it at startup, before any torch work on the loop; every entry point here calls it too (once a thread)."""
    # torch.set_num_threads writes a process-wide default as well as this thread's count; once the helper
    # has set 1, a thread initialised afterwards would inherit it. Claim the default count for the
    # calling thread (the event loop) explicitly, once per thread. Its OpenMP threads are started by its first
    # parallel region and inherit its nice value, so the priority is set before that.
    if not getattr(_claimed, "done", False):
        _apply_render_priority()
        torch.set_num_threads(_RENDER_THREADS)
        torch.get_num_threads()
        _claimed.done = True


def torch_helper_ident() -> int:
    """The helper thread's ``threading.get_ident()`` (starts it if needed); tests assert work lands there."""
    return _EXECUTOR.submit(threading.get_ident).result()


def torch_threads_of_helper() -> int:
    """``torch.get_num_threads()`` as seen on the helper thread (1; tests assert it)."""
    return _EXECUTOR.submit(torch.get_num_threads).result()
