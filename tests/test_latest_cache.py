"""The latest-job cache behind GET /sample (api/services.LatestJobs) and the job-succeeded feed
(store/events.py). The feed over real Redis is exercised in tests/integration/test_full_stack.py."""

from __future__ import annotations

import time

import pytest

from api.services import LatestJobs
from store import events
from store.settings import Settings


def test_entries_are_kept_only_while_the_feed_is_live() -> None:
    c = LatestJobs(ttl_s=60)
    c.put("t", "j1", "k1", c.token())
    assert c.get("t") is None  # not live yet: nothing is trusted
    c.set_live(True)
    c.put("t", "j1", "k1", c.token())
    assert c.get("t") == ("j1", "k1")
    c.set_live(False)
    assert c.get("t") is None
    c.set_live(True)
    assert c.get("t") is None  # coming back live starts empty: messages may have been missed meanwhile


def test_a_notification_during_the_database_read_discards_the_read() -> None:
    c = LatestJobs(ttl_s=60)
    c.set_live(True)
    token = c.token()  # the route takes it before asking the database ...
    c.invalidate("t")  # ... a job of the tenant finishes while the query runs ...
    c.put("t", "old", "k", token)  # ... so the (possibly stale) answer is not cached
    assert c.get("t") is None
    c.put("t", "new", "k2", c.token())
    assert c.get("t") == ("new", "k2")
    c.invalidate("other")
    assert c.get("t") == ("new", "k2")  # another tenant's job leaves this entry alone
    c.invalidate("t")
    assert c.get("t") is None


def test_entries_expire_and_a_zero_ttl_disables_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    c = LatestJobs(ttl_s=5)
    c.set_live(True)
    c.put("t", "j", "k", c.token())
    now = time.monotonic()
    monkeypatch.setattr("api.services.time.monotonic", lambda: now + 6)
    assert c.get("t") is None
    off = LatestJobs(ttl_s=0)
    off.set_live(True)
    off.put("t", "j", "k", off.token())
    assert off.get("t") is None


def test_local_listeners_hear_job_succeeded_and_only_redis_brokers_publish() -> None:
    heard: list[str] = []
    events.add_local_listener(heard.append)
    try:
        events.job_succeeded(Settings(), "acme")  # embedded: no broker, nothing published
    finally:
        events.remove_local_listener(heard.append)
    events.job_succeeded(Settings(), "gone")
    assert heard == ["acme"]
    assert events.redis_url(Settings(broker_url="redis://127.0.0.1:6379/0")) == "redis://127.0.0.1:6379/0"
    assert events.redis_url(Settings(broker_url="amqp://guest@localhost//")) is None


def test_an_unreachable_redis_neither_raises_nor_goes_live() -> None:
    live: list[bool] = []
    settings = Settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    events.job_succeeded(settings, "t")  # logs and returns
    sub = events.Subscriber("redis://127.0.0.1:1/0", lambda t: None, live.append, retry_s=0.05)
    sub.start()
    time.sleep(0.5)
    sub.stop()
    sub.thread.join(5)
    assert live and not any(live)  # it kept trying, never claiming to be live
