"""api/watchdog.py: the event loop's lag histogram, and a warning with the loop thread's stack when it stalls."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import REGISTRY

from api.watchdog import Watchdog, heartbeat


def _lag_count() -> float:
    return REGISTRY.get_sample_value("minegan_event_loop_lag_seconds_count") or 0.0


def _blocking_section_of_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a handler that forgot to leave the loop does


def test_a_stalled_loop_is_reported_once_with_the_blocking_call_and_again_when_it_runs(caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="api.watchdog")
    before = _lag_count()

    async def main() -> Watchdog:
        dog = Watchdog(threshold_s=0.3)
        dog.start()
        beat = asyncio.create_task(heartbeat(dog))
        await asyncio.sleep(0.35)  # healthy: beats every 0.1 s, no report
        assert dog.stalls == 0
        _blocking_section_of_the_loop(1.0)
        await asyncio.sleep(0.35)  # running again: the recovery is logged
        beat.cancel()
        dog.stop()
        return dog

    dog = asyncio.run(main())
    assert dog.stalls == 1
    stalled = [r.getMessage() for r in caplog.records if "has not run for" in r.getMessage()]
    assert len(stalled) == 1 and "_blocking_section_of_the_loop" in stalled[0] and "time.sleep" in stalled[0]
    again = [r.getMessage() for r in caplog.records if "running again after a stall of" in r.getMessage()]
    assert len(again) == 1
    assert _lag_count() - before >= 5  # one observation per beat
    # the beat that ended the stall woke about 0.9 s late
    assert (REGISTRY.get_sample_value("minegan_event_loop_lag_seconds_bucket", {"le": "0.5"}) or 0) < _lag_count()


def test_the_app_exports_the_loop_lag(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers import app_client

    with app_client(tmp_path, monkeypatch) as c:
        time.sleep(0.35)  # a few beats
        body = c.get("/metrics").text
    assert "minegan_event_loop_lag_seconds_bucket" in body
