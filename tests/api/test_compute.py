"""api/compute.py: where the API process runs torch."""

from __future__ import annotations

import asyncio

import torch

from api.compute import CHUNK_VALUES, run_torch, sample_on_loop, torch_helper_ident, torch_threads_of_helper
from core.mining import MinedGenerator
from tests.conftest import tiny_source


def test_a_large_render_lets_the_event_loop_serve_between_pieces() -> None:
    model = MinedGenerator(tiny_source().G.eval(), None)
    n = 256
    pieces = -(-n // (CHUNK_VALUES // (28 * 28)))  # 84 images a piece -> 4 pieces

    async def main() -> tuple[torch.Tensor, int]:
        ticks = 0

        async def other_request() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other_request())
        await asyncio.sleep(0)
        x = await sample_on_loop(model, n, seed=1)
        ticks_during = ticks
        task.cancel()
        return x, ticks_during

    x, ticks = asyncio.run(main())
    assert pieces == 4 and ticks >= pieces  # the other task ran between every two pieces
    assert x.shape == (n, 1, 28, 28) and torch.allclose(x, model.sample(n, seed=1), atol=1e-6)


def test_the_helper_thread_runs_torch_single_threaded_and_is_not_the_caller() -> None:
    import threading

    async def main() -> int:
        return await run_torch(threading.get_ident)

    assert asyncio.run(main()) == torch_helper_ident() != threading.get_ident()
    assert torch_threads_of_helper() == 1


def test_background_threads_run_at_a_lower_cpu_priority_than_the_event_loop() -> None:
    import os
    import threading

    from api.compute import BACKGROUND_NICE, background_priority

    async def main() -> int:
        return await run_torch(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    assert asyncio.run(main()) >= BACKGROUND_NICE  # the torch helper (uploads, model loads)
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def other() -> None:
        background_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [max(here, BACKGROUND_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # the caller's own thread is untouched
