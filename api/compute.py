"""The API process's one torch thread.

Every piece of torch work the API does (loading a finished job's model, sampling, decoding an uploaded
target zip, checking an uploaded generator) runs on this single thread, never on Starlette's threadpool
or the event loop.

The reason is OpenMP. Each OS thread that runs torch ops owns its own OpenMP team. libgomp counts the
threads of all teams. Once that count is above the number of CPUs, it stops spinning between parallel
regions: every op of a forward pass then has to wake its team through a futex.

Measured on the 2-core CI machine (docs/benchmarks.md, sampling): `GET /sample?n=16` generated in
2.8 ms inside the server and 1.55 ms in a plain process. The cause was the first request loading the
model on a threadpool thread, which left a second team alive. With all torch work on one thread the
server generated in the same 1.55 ms. The hop from the event loop to this thread costs about 0.08 ms.

Running everything on one thread also serialises sampling requests. That costs no throughput: each
request already uses every core through OpenMP.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minegan-torch")


async def run_torch(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` on the torch thread and await its result (exceptions propagate)."""
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, functools.partial(fn, *args, **kwargs))


def torch_thread_ident() -> int:
    """The torch thread's ``threading.get_ident()`` (starts it if needed); tests assert work lands there."""
    import threading

    return _EXECUTOR.submit(threading.get_ident).result()
