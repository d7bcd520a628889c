"""The upload checker is shared fairly (api/fair.py): a tenant's turn comes after at most one call of each other
waiting tenant, one tenant runs one check at a time, and a tenant with too many checks waiting gets a 429."""

from __future__ import annotations

import asyncio

import pytest

from api.errors import ApiError
from api.fair import FairQueue


def test_tenants_take_turns_and_a_flood_from_one_does_not_hold_up_another() -> None:
    order: list[str] = []

    async def main() -> dict[str, float]:
        q = FairQueue(slots=1, max_waiting=8)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done: dict[str, float] = {}

        async def check(name: str) -> None:
            async def work() -> None:
                order.append(name)
                await asyncio.sleep(0.05)

            await q.run(name[0], work)
            done[name] = loop.time() - t0

        flood = [asyncio.create_task(check(f"a{i}")) for i in range(6)]  # tenant a sends six hostile zips
        await asyncio.sleep(0.01)
        other = asyncio.create_task(check("b0"))  # then tenant b sends one
        await asyncio.gather(*flood, other)
        return done

    done = asyncio.run(main())
    assert order[:3] == ["a0", "b0", "a1"]  # b's check runs right after the one a was running
    assert done["b0"] < 0.15 and max(done.values()) >= 0.3  # without turns it would wait for all six (0.35 s)


def test_a_tenant_with_too_many_checks_waiting_gets_a_429_and_a_cancelled_wait_frees_its_place() -> None:
    async def main() -> None:
        q = FairQueue(slots=1, max_waiting=2)
        gate = asyncio.Event()
        running = asyncio.create_task(q.run("a", gate.wait))  # a's first check runs (not waiting)
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(q.run("a", gate.wait)) for _ in range(2)]
        await asyncio.sleep(0)
        assert q.waiting("a") == 2
        with pytest.raises(ApiError) as err:
            await q.run("a", gate.wait)
        assert err.value.status == 429 and err.value.code == "too_many_uploads"
        waiting[0].cancel()  # a client gave up while waiting
        await asyncio.sleep(0)
        assert q.waiting("a") == 1
        gate.set()
        await asyncio.gather(running, waiting[1])
        assert q.free == 1 and q.waiting("a") == 0  # every slot back

    asyncio.run(main())
