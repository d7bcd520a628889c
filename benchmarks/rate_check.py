"""What one per-tenant rate check costs the event loop -> docs/benchmarks.md section "rate_check" (issue 35).

The check runs on the API's event loop for every request of a tenant when keys are required (api/limits.py). Two
ways to count in process memory, interleaved in one run: the ``limits`` package's moving-window limiter over its
``memory://`` storage, and :class:`api.limits.LocalWindows`, each checked ``--checks`` times, one every ``--every-ms``,
first with no other thread and then beside one busy Python thread (as the sampling thread or an upload's parse is
in the service).

Usage:  python benchmarks/rate_check.py [--checks 400 --every-ms 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.limits import LocalWindows  # noqa: E402
from benchmarks._doc import command_line, update_section  # noqa: E402


def timings(check: Callable[[], object], n: int, every_s: float) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        check()
        out.append(1000 * (time.perf_counter() - t0))
        time.sleep(every_s)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=400)
    ap.add_argument("--every-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    item = limits.parse("1000/second")
    package = MovingWindowRateLimiter(MemoryStorage())
    local = LocalWindows()
    ways: dict[str, Callable[[], object]] = {"limits, memory://": lambda: package.hit(item, "requests", "bob"),
                                             "api.limits.LocalWindows": lambda: local.hit(item, "requests", "bob")}
    results: dict[tuple[str, str], list[float]] = {}
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            for i in range(10_000):
                x += i

    for beside in ("nothing", "one busy Python thread"):
        thread = threading.Thread(target=busy, daemon=True) if beside != "nothing" else None
        if thread is not None:
            thread.start()
        for _ in range(a.rounds):  # interleaved
            for name, check in ways.items():
                results.setdefault((name, beside), []).extend(timings(check, a.checks, a.every_ms / 1000))
        stop.set()
        if thread is not None:
            thread.join()
        stop.clear()
    rows = ["| counting | beside the check | median | p99 | max |", "|---|---|---|---|---|"]
    for (name, beside), ts in results.items():
        ts.sort()
        rows.append(f"| {name} | {beside} | {statistics.median(ts):.3f} ms | {ts[int(0.99 * len(ts))]:.3f} ms | {ts[-1]:.3f} ms |")
    text = "\n".join([
        "## What a rate check costs the event loop (issue 35)", "",
        f"Command: {command_line()}, 2-core CPU). One tenant's request-rate check "
        f"(api/limits.py), {a.rounds} x {a.checks} checks per row, one every {a.every_ms:g} ms, the two ways interleaved. "
        "`limits`' memory storage starts a timer thread on every hit, and `Thread.start` waits until that thread has "
        "taken the GIL: beside a busy Python thread each check then holds the event loop for a switch interval or two. "
        "The service therefore counts in process memory with `LocalWindows` (the same moving window over `limits`' rate "
        "items) and uses `limits`' limiter only for a shared store (`MINEGAN_RATE_LIMIT_STORAGE=redis://...`), off the "
        "event loop.", "", *rows])
    update_section("rate_check", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
