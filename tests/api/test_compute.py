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


def _whoami() -> tuple[int, int]:
    import os

    return os.getpid(), os.sched_getscheduler(0)


def test_target_zips_are_checked_in_an_idle_class_process_whose_errors_reach_the_caller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """run_check: another process (so its Python holds another GIL), in the idle scheduling class; a check's refusal comes back
    as the same 4xx; a checker that dies is replaced and the call still answers."""
    import os
    import signal

    import pytest

    from api import compute
    from api.errors import ApiError
    from api.uploads import validate_target, validate_target_off_process
    from core.data import write_mnist_zip
    from store.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_dir=str(tmp_path / "b"), work_dir=str(tmp_path / "w"))
    good = write_mnist_zip(tmp_path / "t.zip", [9], 12, seed=0).read_bytes()

    async def main() -> None:
        pid, policy = await compute.run_check(_whoami)
        assert pid != os.getpid() and policy == os.SCHED_IDLE
        assert await validate_target_off_process(good, 1, 28, settings) == validate_target(good, 1, 28, settings)
        with pytest.raises(ApiError) as err:
            await validate_target_off_process(b"PK\x03\x04 not a zip", 1, 28, settings)
        with pytest.raises(ApiError) as same:
            validate_target(b"PK\x03\x04 not a zip", 1, 28, settings)
        assert (err.value.status, err.value.code, err.value.message) == (same.value.status, same.value.code, same.value.message)
        assert 400 <= err.value.status < 500
        os.kill(pid, signal.SIGKILL)  # the checker dies (out of memory, say)
        await asyncio.sleep(0.2)
        pid2, _ = await compute.run_check(_whoami)
        assert pid2 not in (pid, os.getpid())

    asyncio.run(main())



def _pid_after(seconds: float) -> int:  # run in the checker process (module level: it is pickled by reference)
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_a_killed_checker_is_replaced_once_when_calls_fail_together() -> None:
    """Two calls in flight when the checker process dies both run again, in one new checker process: the second
    to fail must not discard the process that the first one started in its place."""
    import os
    import signal

    from api.compute import run_check

    async def main() -> tuple[int, int, int]:
        old = await run_check(_pid_after, 0.0)
        calls = [asyncio.ensure_future(run_check(_pid_after, 1.0)), asyncio.ensure_future(run_check(_pid_after, 0.0))]
        await asyncio.sleep(0.3)  # the first is running in the checker, the second waits for it
        os.kill(old, signal.SIGKILL)
        a, b = await asyncio.gather(*calls)
        return old, a, b

    old, a, b = asyncio.run(main())
    assert a == b != old


def test_the_render_thread_and_the_openmp_team_it_starts_run_at_the_render_nice_value(caplog) -> None:  # type: ignore[no-untyped-def]
    """MINEGAN_RENDER_NICE: the thread that claims the render team gets the nice value before its first parallel
    region, so the OpenMP threads that region starts inherit it; without the privilege to lower it, renders keep the
    process's priority and a warning says so."""
    import os
    import threading

    from api import compute

    def nice_of_threads() -> dict[int, int]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                out[int(tid)] = os.getpriority(os.PRIO_PROCESS, int(tid))
            except OSError:
                pass  # a thread that just ended
        return out

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    want = min(19, base + 3) if base < 19 else 19  # raising one's nice value needs no privilege
    lower = base - 1  # lowering it does
    seen: dict[str, object] = {}

    def render_thread(value: int, key: str) -> None:
        compute.RenderPriority.nice, compute.RenderPriority.applied = value, None
        compute.claim_render_team()
        a = torch.randn(512, 512)
        for _ in range(3):
            a = torch.tanh(a @ a)  # parallel regions: libgomp starts this thread's team now
        seen[key] = (threading.get_native_id(), compute.RenderPriority.applied, torch.get_num_threads(), nice_of_threads())

    before = nice_of_threads()
    t = threading.Thread(target=render_thread, args=(want, "raise"))
    t.start()
    t.join()
    tid, applied, threads, after = seen["raise"]  # type: ignore[misc]
    assert applied == want and after[tid] == want
    team = [x for x, v in after.items() if v == want and x not in before]
    assert tid in team and len(team) >= threads  # the loop thread and its OpenMP workers
    def probe() -> None:  # may a thread lower its nice value here (root, CAP_SYS_NICE, RLIMIT_NICE)?
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), lower)
            seen["privileged"] = True
        except OSError:
            seen["privileged"] = False

    p = threading.Thread(target=probe)
    p.start()
    p.join()
    privileged = seen["privileged"]
    caplog.clear()
    t = threading.Thread(target=render_thread, args=(lower, "lower"))
    t.start()
    t.join()
    tid, applied, _, after = seen["lower"]  # type: ignore[misc]
    if privileged:
        assert applied == lower and after[tid] == lower
    else:
        assert applied is None and "not applied" in caplog.text
    compute.RenderPriority.nice, compute.RenderPriority.applied = 0, None


def test_without_the_privilege_to_lower_its_nice_value_the_render_thread_keeps_the_process_priority(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import os
    import threading

    from api import compute

    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    out: dict[str, object] = {}

    def render_thread() -> None:
        compute.RenderPriority.nice, compute.RenderPriority.applied = -5, None
        compute.claim_render_team()
        out["applied"] = compute.RenderPriority.applied
        out["threads"] = torch.get_num_threads()

    t = threading.Thread(target=render_thread)
    t.start()
    t.join()
    assert out["applied"] is None and out["threads"] == compute._RENDER_THREADS  # claimed all the same
    assert "MINEGAN_RENDER_NICE=-5 not applied" in caplog.text and "Operation not permitted" in caplog.text
    compute.RenderPriority.nice = 0


def test_the_checker_process_ends_with_the_api_process_even_a_killed_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A killed API process (SIGKILL: no shutdown code runs) leaves no checker behind: it notices and exits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import os, signal\n"
              "from api import compute\n"
              "pid = compute._checker().submit(os.getpid).result(timeout=120)\n"
              "print(pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    checker = int(proc.stdout.split()[0])

    def running(pid: int) -> bool:  # a process that exited stays a zombie until init reaps it
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.time() + 10
    while running(checker) and time.time() < deadline:
        time.sleep(0.2)
    assert not running(checker), f"checker {checker} outlived its killed parent"
