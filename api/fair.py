"""Sharing a scarce helper among tenants: the upload checker process (api/compute.py, ``run_check``).

One tenant's uploads must cost that tenant, not everyone: without this, two hostile-but-valid zips (each decoding
for seconds under the pixel limits) made another tenant's 100-image submit wait 9.9 s instead of 0.05 s.
:class:`FairQueue` lets at most ``slots`` calls run at once and at most ``per_tenant`` of one tenant's; the calls
waiting are kept in a queue per tenant, and the tenant served least recently goes next, so a tenant's turn comes after
at most one call of each other tenant that is waiting. A tenant with ``max_waiting`` calls waiting already gets a 429.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from api.errors import ApiError

T = TypeVar("T")


class FairQueue:
    """Round-robin over tenants in front of ``slots`` workers (module docstring). Use it from one event loop."""

    def __init__(self, slots: int = 1, per_tenant: int = 1, max_waiting: int = 4) -> None:
        self.free, self.per_tenant, self.max_waiting = slots, per_tenant, max_waiting
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._running: Counter[str] = Counter()
        self._turns = 0
        self._last_turn: dict[str, int] = {}  # when each tenant was last served: the least recent goes first

    def waiting(self, tenant: str) -> int:
        return len(self._waiting.get(tenant, ()))

    async def run(self, tenant: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` once it is ``tenant``'s turn."""
        if self.waiting(tenant) >= self.max_waiting:
            raise ApiError(429, "too_many_uploads", f"{self.max_waiting} of your uploads are already waiting to be checked; "
                                                    "send the next one when they are done")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(turn)
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just before the cancel: give the slot back
                self._release(tenant)
            else:
                self._forget(tenant, turn)
            raise
        try:
            return await call()
        finally:
            self._release(tenant)

    def _forget(self, tenant: str, turn: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self._waiting[tenant]

    def _release(self, tenant: str) -> None:
        self.free += 1
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
        self._dispatch()

    def _dispatch(self) -> None:
        while self.free > 0:
            ready = [t for t in self._waiting if self._running[t] < self.per_tenant]
            if not ready:
                return
            tenant = min(ready, key=lambda t: self._last_turn.get(t, -1))
            queue = self._waiting[tenant]
            turn = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if turn.done():  # cancelled while waiting
                continue
            turn.set_result(None)
            self.free -= 1
            self._running[tenant] += 1
            self._turns += 1
            self._last_turn[tenant] = self._turns
