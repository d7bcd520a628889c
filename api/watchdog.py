"""The event loop's health: how late its timers fire (a Prometheus histogram), and where it is stuck when it stalls.

Everything latency-sensitive in this API runs on one event-loop thread (api/compute.py): sample rendering, HTTP
parsing, the gRPC server. Anything that blocks that thread delays every request, and, with a Python stack at the
moment it happens, an operator can see which call it was.

* :func:`heartbeat` is a task on the loop. It sleeps :data:`INTERVAL_S` at a time and records how much later than
  asked it woke up in ``minegan_event_loop_lag_seconds``.
* :class:`Watchdog` is a daemon thread. When the heartbeat has been silent for ``threshold_s``, it logs a warning with
  the loop thread's Python stack at that moment, once per stall, and the stall's length when the loop is back
  (``MINEGAN_LOOP_STALL_WARN_S``; 0: off). The thread only reads a timestamp and, on a stall, the loop thread's
  frame (``sys._current_frames``), so it costs nothing while the loop is healthy.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from prometheus_client import Histogram

LAG = Histogram("minegan_event_loop_lag_seconds", "How much later than asked the API's event loop woke a sleeping task",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INTERVAL_S = 0.1
log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.last = time.monotonic()  # the heartbeat's last beat (written by the loop, read by the thread)
        self.loop_thread = threading.get_ident()
        self.stalls = 0  # stalls reported so far (tests read it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="minegan-loop-watchdog", daemon=True)

    def start(self) -> None:
        self.loop_thread = threading.get_ident()  # called on the loop thread
        self.last = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        reported_at: float | None = None  # the beat that the current stall began after
        while not self._stop.wait(min(INTERVAL_S, self.threshold_s / 4)):
            last = self.last
            silent = time.monotonic() - last
            if silent >= self.threshold_s and reported_at != last:
                reported_at = last
                self.stalls += 1
                frame = sys._current_frames().get(self.loop_thread)
                where = "".join(traceback.format_stack(frame)) if frame is not None else "(the loop thread has no frame)\n"
                log.warning("the event loop has not run for %.1f s; every request waits. Its thread is here (a stack that ends "
                            "in the selector's poll means it is waiting for the GIL, held by another thread, or for a CPU):\n%s",
                            silent, where)
            elif reported_at is not None and reported_at != last:
                log.warning("the event loop is running again after a stall of %.1f s", last - reported_at)
                reported_at = None


async def heartbeat(dog: Watchdog | None) -> None:
    """Beat for ``dog`` (when there is one) and measure the loop's lag, forever (the app cancels it at shutdown)."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(INTERVAL_S)
        LAG.observe(max(0.0, loop.time() - t0 - INTERVAL_S))
        if dog is not None:
            dog.last = time.monotonic()
