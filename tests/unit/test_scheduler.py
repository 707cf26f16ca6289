"""The per-resource worker: every trigger runs the same pass, passes never overlap, wakes coalesce."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aliasroll.controller.reconciler import PassResult, Wake
from aliasroll.controller.scheduler import Scheduler
from aliasroll.errors import RegistryUnavailable

KEY = ("ml", "sentiment")


def body(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u", "generation": generation},
        "spec": {"g": generation},
        "status": status or {},
    }


class Recorder:
    def __init__(self, result: PassResult | None = None, delay: float = 0.0) -> None:
        self.result = result or PassResult(next_in=None)
        self.delay = delay
        self.passes: list[Mapping[str, Any]] = []
        self.running = 0
        self.overlapped = False
        self.forgotten: list[tuple[str, str]] = []

    async def reconcile(self, seen: Mapping[str, Any], wake: Wake) -> PassResult:
        self.running += 1
        self.overlapped |= self.running > 1
        self.passes.append(seen)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return self.result

    def forget(self, key: tuple[str, str], _body: Mapping[str, Any] | None) -> None:
        self.forgotten.append(key)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def until(check: Any, limit: float = 5.0) -> None:
    """Polls with a deadline: timing assertions here are lower bounds only, never exact."""
    deadline = asyncio.get_running_loop().time() + limit
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_new_resource_gets_a_pass_and_status_only_changes_do_not_wake_it() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    scheduler.update(KEY, body())
    await settle()
    scheduler.update(KEY, body(status={"written": "by us"}))  # our own status write comes back
    await settle()
    assert len(recorder.passes) == 1
    scheduler.update(KEY, body(generation=2))  # a spec change
    await settle()
    assert [p["metadata"]["generation"] for p in recorder.passes] == [1, 2]
    await scheduler.stop()
    assert recorder.forgotten == [KEY]


async def test_wakes_during_a_pass_coalesce_into_one_more_pass() -> None:
    recorder = Recorder(delay=0.05)
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    scheduler.update(KEY, body())
    await until(lambda: recorder.running == 1)
    for _ in range(10):
        scheduler.wake(KEY)
    await until(lambda: len(recorder.passes) == 2 and recorder.running == 0)
    await asyncio.sleep(0.1)
    assert len(recorder.passes) == 2
    assert not recorder.overlapped
    await scheduler.stop()


async def test_the_timer_runs_the_same_pass() -> None:
    recorder = Recorder(result=PassResult(next_in=0.02))
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    scheduler.update(KEY, body())
    await until(lambda: len(recorder.passes) >= 3)
    await scheduler.stop()


async def test_failures_back_off_and_a_crash_never_kills_the_worker() -> None:
    calls: list[float] = []

    async def flaky(seen: Mapping[str, Any], wake: Wake) -> PassResult:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise RuntimeError("a bug in a pass")
        return PassResult(next_in=10, failed=RegistryUnavailable("down"))

    scheduler = Scheduler(reconcile=flaky, forget=lambda key, body: None, retry_base=0.05, retry_max=1)
    scheduler.update(KEY, body())
    await until(lambda: len(calls) >= 3)  # retried after the crash, and after the failed pass
    await scheduler.stop()
    assert calls[1] - calls[0] >= 0.05
    assert calls[2] - calls[1] >= 0.1, "each failure waits twice as long"
