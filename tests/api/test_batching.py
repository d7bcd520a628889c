"""api/batching.py: concurrent sample requests share a forward pass and get exactly the bytes they get alone."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from api import batching
from api.batching import SampleBatcher
from api.compute import CHUNK_VALUES, sample_on_loop
from core.mining import MinedGenerator
from core.nets import Miner, MinerConfig
from tests.conftest import tiny_source

CHUNK = CHUNK_VALUES // (28 * 28)


def _model() -> MinedGenerator:
    torch.manual_seed(0)
    src = tiny_source(width=8, z_dim=16)
    return MinedGenerator(src.G.eval(), Miner(MinerConfig(z_dim=16, hidden=16)).eval())


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_images_bit_for_bit() -> None:
    model, batcher = _model(), SampleBatcher(window_s=0.002, measure=False)
    seeds = [3, 1, 4, 1, 5, 9, 2, 6]
    ns = [16, 16, 8, 16, 4, 32, 16, 12]

    async def main() -> list[torch.Tensor]:
        return list(await asyncio.gather(*(sample_on_loop(model, n, s, batcher) for n, s in zip(ns, seeds, strict=True))))

    got = asyncio.run(main())
    assert batcher.batches == 1 and batcher.requests == 8  # all eight in one forward pass
    for x, n, s in zip(got, ns, seeds, strict=True):
        assert torch.equal(x, model.sample(n, s))  # bit for bit the images of the same seed alone


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    model, batcher = _model(), SampleBatcher(window_s=5.0, measure=False)

    async def main() -> float:
        await sample_on_loop(model, 16, 0, batcher)  # the first request also runs the once-per-n check
        t0 = time.perf_counter()
        await sample_on_loop(model, 16, 1, batcher)
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 1.0  # far below the 5 s window
    assert batcher.batches == 2


def test_under_load_a_leader_waits_for_as_many_members_as_the_last_batch_had_then_at_most_the_window() -> None:
    model, batcher = _model(), SampleBatcher(window_s=0.2, measure=False)

    async def main() -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        await asyncio.gather(*(sample_on_loop(model, 16, s, batcher) for s in range(3)))  # a batch of 3

        async def late(s: int, delay: float) -> torch.Tensor:
            await asyncio.sleep(delay)
            return await sample_on_loop(model, 16, s, batcher)

        # the next leader waits for 3 members: two that come 10 and 20 ms later join it
        joined = await asyncio.gather(sample_on_loop(model, 16, 10, batcher), late(11, 0.01), late(12, 0.02))
        t0 = time.perf_counter()
        alone = await sample_on_loop(model, 16, 7, batcher)  # wants 3 members again, none come: waits the window
        return time.perf_counter() - t0, alone, list(joined)

    waited, alone, joined = asyncio.run(main())
    assert batcher.batches == 3 and batcher.requests == 7
    assert 0.15 < waited < 1.0
    assert torch.equal(alone, model.sample(16, 7))
    for x, s in zip(joined, (10, 11, 12), strict=True):
        assert torch.equal(x, model.sample(16, s))


def test_members_are_served_when_the_leader_is_cancelled() -> None:
    model, batcher = _model(), SampleBatcher(window_s=0.5, measure=False)

    async def main() -> torch.Tensor:
        await asyncio.gather(*(sample_on_loop(model, 16, s, batcher) for s in range(2)))  # next leader waits for 2
        leader = asyncio.create_task(sample_on_loop(model, 16, 20, batcher))
        await asyncio.sleep(0.01)
        member = asyncio.create_task(sample_on_loop(model, 8, 21, batcher))
        await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        return await asyncio.wait_for(member, 2.0)

    assert torch.equal(asyncio.run(main()), model.sample(8, 21))


@pytest.mark.parametrize("n", [1, 5, 6, 7, 9, 11, CHUNK + 1, 200])
def test_other_sizes_are_rendered_alone(n: int) -> None:
    model, batcher = _model(), SampleBatcher(window_s=0.002, measure=False)

    async def main() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        got = await asyncio.gather(*(sample_on_loop(model, n, s, batcher) for s in range(3)))
        alone = [await sample_on_loop(model, n, s) for s in range(3)]  # no batcher: what the service rendered before
        return list(got), alone

    got, alone = asyncio.run(main())
    assert batcher.batches == 0  # never batched: not a multiple of 4, or more than one render piece
    for x, y in zip(got, alone, strict=True):
        assert torch.equal(x, y)


def test_the_invariance_check_turns_batching_off_for_a_model_whose_rows_depend_on_the_batch() -> None:
    class BatchDependent(MinedGenerator):
        def decode(self, u: torch.Tensor) -> torch.Tensor:  # a row's result moves with the batch's size
            return super().decode(u) + 1e-6 * len(u)

    src = tiny_source(width=4, z_dim=8)
    model, batcher = BatchDependent(src.G.eval(), None), SampleBatcher(window_s=0.002, measure=False)

    async def main() -> list[torch.Tensor]:
        return list(await asyncio.gather(*(sample_on_loop(model, 16, s, batcher) for s in range(4))))

    got = asyncio.run(main())
    assert batcher.batches == 0
    for s, x in enumerate(got):
        assert torch.equal(x, model.sample(16, s))


def test_batching_off() -> None:
    batcher = SampleBatcher(window_s=0.0)
    assert not batcher.eligible(_model(), 16, CHUNK)


def test_a_batch_holds_at_most_four_render_pieces() -> None:
    batcher = SampleBatcher(window_s=0.002, max_images=128)
    assert batcher.cap(83) == 128  # 28x28 gray: 83 images a piece, the max_images cap
    assert batcher.cap(5) == 20  # 64x64 RGB: 5 images a piece -> 20 a batch, not 128 on the event loop


def test_batches_are_limited_to_the_size_that_costs_least_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    class Clock:
        """api.batching's clock: a forward pass takes exactly its listed cost, whatever the machine's load (a pass that
        slept its cost would also pay the scheduler's wake-up delay, which favours the larger batch)."""

        now = 0.0

        def perf_counter(self) -> float:
            return self.now

        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

    clock = Clock()
    monkeypatch.setattr(batching, "time", clock)

    class Timed(MinedGenerator):
        cost: dict[int, float] = {}

        def decode(self, u: torch.Tensor) -> torch.Tensor:
            clock.now += self.cost.get(len(u), 0.0)  # sizes not listed: free (the invariance check's)
            return super().decode(u)

    src = tiny_source(width=4, z_dim=8)
    model = Timed(src.G.eval(), None)
    batcher = SampleBatcher(window_s=0.002, max_images=64)
    # seconds per forward pass of 16, 32, 64 images: 32 is cheapest per image (0.6 ms vs 1 and 1.2)
    Timed.cost = {16: 0.016, 32: 0.019, 64: 0.075}
    assert SampleBatcher._cheapest(model, 16, 64) == 32
    Timed.cost = {16: 0.016, 32: 0.032, 64: 0.04}  # ever cheaper: the cap
    assert SampleBatcher._cheapest(model, 16, 64) == 64
    Timed.cost = {16: 0.01, 32: 0.03, 64: 0.08}  # a larger batch never pays: never batched
    assert batcher._limit(model, 16, 64) == 16

    async def main() -> list[torch.Tensor]:
        return list(await asyncio.gather(*(sample_on_loop(model, 16, s, batcher) for s in range(3))))

    got = asyncio.run(main())
    assert batcher.batches == 0
    for s, x in enumerate(got):
        assert torch.equal(x, model.sample(16, s))
