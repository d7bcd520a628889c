"""Job-succeeded notifications, so an API process can cache "the tenant's most recent finished job"
(``GET /sample`` without ``job=``) instead of asking the database on every request.

A worker calls :func:`job_succeeded` right after the job's row says ``succeeded``:

* listeners in the same process are called directly (the embedded server's worker calls them once its job's
  child process has ended: :func:`notify_local`);
* with a Redis broker the tenant is also published on :data:`CHANNEL`; :class:`Subscriber` (in each API
  process) listens and reports it. While the subscription is down nothing can be trusted, so the cache is
  dropped and bypassed until it is back (``api/services.LatestJobs``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from store.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "minegan:job-succeeded"
Listener = Callable[[str], None]
_local: list[Listener] = []
_lock = threading.Lock()


def add_local_listener(fn: Listener) -> None:
    with _lock:
        _local.append(fn)


def remove_local_listener(fn: Listener) -> None:
    with _lock:
        if fn in _local:
            _local.remove(fn)


def notify_local(tenant: str) -> None:
    """Call this process's listeners (the embedded worker does, once its job's child process has finished)."""
    with _lock:
        local = list(_local)
    for fn in local:
        fn(tenant)


def redis_url(settings: Settings) -> str | None:
    url = settings.broker_url or ""
    return url if url.startswith(("redis://", "rediss://")) else None


def job_succeeded(settings: Settings, tenant: str) -> None:
    """Tell every API process that ``tenant`` has a new most recent finished job. Never raises: a lost
    message is bounded by the cache's ``latest_cache_s`` expiry."""
    notify_local(tenant)
    url = redis_url(settings)
    if url is None:
        return
    import redis

    for attempt in range(3):
        try:
            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            try:
                client.publish(CHANNEL, tenant)
            finally:
                client.close()
            return
        except redis.RedisError as exc:
            log.warning("could not publish job-succeeded for tenant %s (attempt %d): %s", tenant, attempt + 1, exc)


class Subscriber:
    """A daemon thread subscribed to :data:`CHANNEL`. ``on_live(True)`` once the subscription is confirmed,
    ``on_live(False)`` when it breaks (then it reconnects), ``on_message(tenant)`` per notification."""

    def __init__(self, url: str, on_message: Listener, on_live: Callable[[bool], None], retry_s: float = 1.0) -> None:
        self.url, self.on_message, self.on_live, self.retry_s = url, on_message, on_live, retry_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="minegan-events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            client = None
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=2)
                ps = client.pubsub()
                ps.subscribe(CHANNEL)
                live = False
                while not self._stop.is_set():
                    msg = ps.get_message(timeout=1.0)  # pings every health_check_interval: a dead link raises
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe" and not live:
                        live = True
                        self.on_live(True)
                    elif msg["type"] == "message":
                        data = msg["data"]
                        self.on_message(data.decode() if isinstance(data, bytes) else str(data))
            except Exception as exc:  # noqa: BLE001 - any failure: distrust the cache, reconnect
                log.warning("job-succeeded subscription lost (%s); /sample asks the database until it is back", exc)
            finally:
                self.on_live(False)
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
            self._stop.wait(self.retry_s)
