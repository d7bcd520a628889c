"""Per-tenant rates counted in the real Redis (``MINEGAN_RATE_LIMIT_STORAGE=redis://...``, as compose sets it): two
API processes' limiters share one count per tenant, and the count is not read on the event loop."""

from __future__ import annotations

import asyncio
import os
import uuid

from api.limits import TenantRates
from store.settings import Settings
from tests.integration.conftest import _need_services


def test_two_processes_limiters_share_one_count_per_tenant_in_redis() -> None:
    _need_services()
    url = f"redis://127.0.0.1:{os.environ['MINEGAN_IT_REDIS_PORT']}/2"
    settings = Settings(auth="required", rate_limit="3/minute", upload_rate_limit="1/minute", rate_limit_storage=url)
    one, two = TenantRates(settings), TenantRates(settings)  # as two API processes would make them
    assert one.blocking and two.blocking
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"

    async def run() -> list[int | None]:
        out = []
        for rates, upload in ((one, True), (two, False), (two, True), (one, False), (one, False)):
            refused = await rates.check(alice, upload)
            out.append(None if refused is None else refused.status)
        return out

    # alice: an upload (request 1, from one process), a request (2, from the other), a second upload refused by the
    # upload rate the first process counted (a refused request is not counted), a request (3), then the request rate is
    # spent
    assert asyncio.run(run()) == [None, None, 429, None, 429]
    assert asyncio.run(two.check(bob, True)) is None
