"""The per-resource worker: every trigger runs the same pass, passes never overlap, wakes coalesce;
workers follow objects (uids), not names, and a resync brings them in line with a list."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from aliasroll.backoff import Backoff
from aliasroll.config import OperatorConfig
from aliasroll.controller.reconciler import PassResult
from aliasroll.controller.scheduler import (
    DEFAULT_MAX_CONCURRENT,
    ResyncPlan,
    Scheduler,
    jittered,
    plan_resync,
)
from aliasroll.controller.slots import PassSlot, given_back, running_in
from aliasroll.errors import RegistryUnavailable
from aliasroll.registry.poller import Wake

NAME = ("ml", "sentiment")


def body(
    generation: int = 1,
    status: dict[str, Any] | None = None,
    *,
    uid: str = "u",
    name: str = "sentiment",
    created: str = "2025-01-01T00:00:00Z",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": "ml",
        "name": name,
        "uid": uid,
        "generation": generation,
        "creationTimestamp": created,
    }
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:10:00Z"
    return {"metadata": meta, "spec": {"g": generation}, "status": status or {}}


class Recorder:
    def __init__(self, result: PassResult | None = None, delay: float = 0.0) -> None:
        self.result = result or PassResult(next_in=None)
        self.delay = delay
        self.passes: list[Mapping[str, Any]] = []
        self.running = 0
        self.overlapped = False
        self.forgotten: list[str] = []

    async def reconcile(self, seen: Mapping[str, Any], wake: Wake) -> PassResult:
        self.running += 1
        self.overlapped |= self.running > 1
        self.passes.append(seen)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return self.result

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)

    def uids(self) -> list[str]:
        return [p["metadata"]["uid"] for p in self.passes]


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
    await scheduler.update(body())
    await settle()
    await scheduler.update(body(status={"written": "by us"}))  # our own status write comes back
    await settle()
    assert len(recorder.passes) == 1
    await scheduler.update(body(generation=2))  # a spec change
    await settle()
    assert [p["metadata"]["generation"] for p in recorder.passes] == [1, 2]
    await scheduler.stop()
    assert recorder.forgotten == ["u"]


async def test_wakes_during_a_pass_coalesce_into_one_more_pass() -> None:
    recorder = Recorder(delay=0.05)
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body())
    await until(lambda: recorder.running == 1)
    for _ in range(10):
        scheduler.wake_named(NAME)
    await until(lambda: len(recorder.passes) == 2 and recorder.running == 0)
    await asyncio.sleep(0.1)
    assert len(recorder.passes) == 2
    assert not recorder.overlapped
    await scheduler.stop()


async def test_the_timer_runs_the_same_pass() -> None:
    recorder = Recorder(result=PassResult(next_in=0.02))
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body())
    await until(lambda: len(recorder.passes) >= 3)
    await scheduler.stop()


async def test_failures_back_off_and_a_crash_never_kills_the_worker() -> None:
    calls: list[float] = []

    async def flaky(seen: Mapping[str, Any], wake: Wake) -> PassResult:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise RuntimeError("a bug in a pass")
        return PassResult(next_in=10, failed=RegistryUnavailable("down"))

    scheduler = Scheduler(
        reconcile=flaky, forget=lambda uid: None, backoff=Backoff(base=0.05, cap=1, jitter=0)
    )
    await scheduler.update(body())
    await until(lambda: len(calls) >= 3)  # retried after the crash, and after the failed pass
    await scheduler.stop()
    assert calls[1] - calls[0] >= 0.05
    assert calls[2] - calls[1] >= 0.1, "each failure waits twice as long"


# Replacement (`kubectl replace --force`, Argo CD Replace): same name, new uid. Kopf handles the
# events of different objects concurrently, so the old object's events may come after the new one's.

OLD = {"uid": "old", "created": "2025-01-01T00:00:00Z"}
NEW = {"uid": "new", "created": "2025-01-01T00:00:07Z"}


async def test_the_replaced_objects_late_deleted_event_leaves_the_new_object_running() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body(**OLD))
    await until(lambda: recorder.uids() == ["old"])
    await scheduler.update(body(**NEW))  # ADDED of the new object ...
    await until(lambda: recorder.uids() == ["old", "new"])
    await scheduler.remove("old")  # ... then DELETED of the old one
    scheduler.wake_named(NAME)  # a child of `sentiment` changed: the new object looks again
    await until(lambda: recorder.uids() == ["old", "new", "new"])
    await scheduler.stop()
    assert recorder.forgotten == ["old", "new"]


async def test_an_older_objects_late_event_neither_stops_nor_doubles_the_new_worker() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body(**OLD))
    await scheduler.update(body(**NEW))  # the name is the new object's now: the old one is gone
    await scheduler.update(body(generation=2, **OLD))  # a MODIFIED of the old object, handled late
    await settle()
    assert recorder.uids() == ["new"], "the old worker stopped before its first pass; never restarted"
    assert recorder.forgotten == ["old"]
    await scheduler.remove("old")
    scheduler.wake_named(NAME)
    await until(lambda: recorder.uids() == ["new", "new"])
    await scheduler.stop()


async def test_objects_created_in_the_same_second_both_run_until_the_old_ones_deletion() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body(uid="old"))
    await scheduler.update(body(uid="new"))  # same creationTimestamp: no telling which is newer
    await until(lambda: sorted(recorder.uids()) == ["new", "old"])
    await scheduler.remove("old")
    scheduler.wake_named(NAME)
    await until(lambda: recorder.uids()[2:] == ["new"])
    await scheduler.stop()
    assert recorder.forgotten == ["old", "new"]


async def test_being_deleted_stops_the_worker_and_later_events_do_not_restart_it() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body())
    await until(lambda: len(recorder.passes) == 1)
    await scheduler.update(body(deleting=True))
    assert recorder.forgotten == ["u"]
    await scheduler.update(body(generation=2))  # Kopf hands over an older event late
    await settle()
    assert len(recorder.passes) == 1
    await scheduler.stop()


async def test_a_pass_that_finds_its_resource_gone_ends_its_worker() -> None:
    """A deletion the watch missed: the status write answered 404, so the pass said `gone`."""
    recorder = Recorder(result=PassResult(next_in=0.01, gone=True))
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(body())
    await until(lambda: recorder.forgotten == ["u"])
    scheduler.wake_named(NAME)
    await asyncio.sleep(0.1)  # the timer (0.01 s) would have run several passes by now
    assert len(recorder.passes) == 1
    await scheduler.stop()
    assert recorder.forgotten == ["u"]


# Resync: a list of the resources against the workers.


def listed(uid: str, *, deleting: bool = False) -> dict[str, Any]:
    return body(uid=uid, name=f"name-of-{uid}", deleting=deleting)


@dataclass(frozen=True)
class Resync:
    listed: list[str]
    heard: dict[str, int]
    began: int
    stop: list[str]
    start: list[str]
    removed: dict[str, int] = field(default_factory=dict)


RESYNC_CASES = {
    "in step": Resync(listed=["a", "b"], heard={"a": 1, "b": 2}, began=5, stop=[], start=[]),
    "deletion missed by the watch": Resync(
        listed=["a"], heard={"a": 1, "gone": 2}, began=5, stop=["gone"], start=[]
    ),
    "created after the list began: not in the list, keeps running": Resync(
        listed=["a"], heard={"a": 1, "fresh": 6}, began=5, stop=[], start=[]
    ),
    "addition missed by the watch": Resync(listed=["a", "b"], heard={"a": 1}, began=5, stop=[], start=["b"]),
    "deleted while the list was under way: not restarted": Resync(
        listed=["a", "b"], heard={"a": 1}, removed={"b": 6}, began=5, stop=[], start=[]
    ),
    "removed earlier (a pass found it gone): not restarted": Resync(
        listed=["a", "b"], heard={"a": 1}, removed={"b": 3}, began=5, stop=[], start=[]
    ),
    "listed but being deleted: no worker": Resync(
        listed=["a", "b-deleting"], heard={"a": 1}, began=5, stop=[], start=[]
    ),
    "nothing listed at all (namespace emptied)": Resync(
        listed=[], heard={"a": 1, "b": 4}, began=5, stop=["a", "b"], start=[]
    ),
}


@pytest.mark.parametrize("case", RESYNC_CASES.values(), ids=RESYNC_CASES.keys())
def test_resync_plan(case: Resync) -> None:
    bodies = [listed(uid, deleting=uid.endswith("-deleting")) for uid in case.listed]
    plan = plan_resync(listed=bodies, heard=case.heard, removed=case.removed, list_began=case.began)
    assert plan.stop == frozenset(case.stop)
    assert [b["metadata"]["uid"] for b in plan.start] == case.start


async def test_resync_stops_workers_of_missed_deletions_and_starts_missed_additions() -> None:
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget)
    await scheduler.update(listed("kept"))
    await scheduler.update(listed("gone"))
    await until(lambda: len(recorder.passes) == 2)
    began = scheduler.position
    await scheduler.update(listed("fresh"))  # created while the list was under way
    plan = await scheduler.resync([listed("kept"), listed("missed")], list_began=began)
    assert plan == ResyncPlan(stop=frozenset({"gone"}), start=(listed("missed"),))
    await until(lambda: sorted(set(recorder.uids())) == ["fresh", "gone", "kept", "missed"])
    assert recorder.forgotten == ["gone"]
    # The next resync lists "fresh" too; "gone" is not listed and not restarted.
    plan = await scheduler.resync(
        [listed("kept"), listed("missed"), listed("fresh")], list_began=scheduler.position
    )
    assert plan == ResyncPlan(stop=frozenset(), start=())
    await scheduler.stop()


# Scale: a global limit on passes under way, jittered requeues, and no passes of its own for a
# registry outage (the poller retries the registry and wakes the resources when it answers).


async def test_no_more_passes_at_once_than_the_limit_across_resources() -> None:
    running, most = 0, 0
    done: list[str] = []

    async def slow(seen: Mapping[str, Any], wake: Wake) -> PassResult:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        done.append(seen["metadata"]["uid"])
        return PassResult(next_in=None)

    scheduler = Scheduler(reconcile=slow, forget=lambda uid: None, max_concurrent=3)
    for index in range(10):
        await scheduler.update(body(uid=f"u{index}", name=f"m{index}"))
    await until(lambda: len(done) == 10)
    await scheduler.stop()
    assert most == 3


async def test_a_registry_outage_adds_no_passes() -> None:
    calls: list[float] = []

    async def registry_down(seen: Mapping[str, Any], wake: Wake) -> PassResult:
        calls.append(asyncio.get_running_loop().time())
        return PassResult(next_in=0.3, failed=RegistryUnavailable("down"), back_off=False)

    scheduler = Scheduler(
        reconcile=registry_down, forget=lambda uid: None, backoff=Backoff(base=0.01, cap=0.01), jitter=0
    )
    await scheduler.update(body())
    await asyncio.sleep(0.5)
    await scheduler.stop()
    assert len(calls) == 2, "one pass, then the next at the poll interval: not the 10 ms backoff"


@pytest.mark.parametrize(
    ("case", "fraction", "expected"),
    [("shortest", 0.0, 9.0), ("middle", 0.5, 10.0), ("longest", 1.0, 11.0), ("no timer", 0.5, None)],
)
def test_periodic_requeues_are_spread_either_way(case: str, fraction: float, expected: float | None) -> None:
    delay = None if expected is None else 10.0
    assert jittered(delay, 0.1, random_fraction=lambda: fraction) == pytest.approx(expected)


async def after_first_pass(*, settle: float) -> tuple[Recorder, Scheduler]:
    """A resource that has had its first pass, under a scheduler that settles child changes."""
    recorder = Recorder()
    scheduler = Scheduler(reconcile=recorder.reconcile, forget=recorder.forget, settle=settle)
    await scheduler.update(body())
    await until(lambda: len(recorder.passes) == 1 and recorder.running == 0)
    return recorder, scheduler


async def test_a_burst_of_child_changes_wakes_the_owner_once_after_it_settles() -> None:
    recorder, scheduler = await after_first_pass(settle=0.2)
    began = asyncio.get_running_loop().time()
    for _ in range(4):  # a new Deployment's status, moving as its pods start
        scheduler.child_changed(NAME)
        await asyncio.sleep(0.02)
    assert scheduler.pending == 0, "not woken during the burst"
    await until(lambda: len(recorder.passes) == 2)
    assert asyncio.get_running_loop().time() - began >= 0.2
    await asyncio.sleep(0.3)
    assert len(recorder.passes) == 2, "one pass for the whole burst"
    await scheduler.stop()


async def test_a_pass_that_begins_meanwhile_takes_the_settling_changes_with_it() -> None:
    recorder, scheduler = await after_first_pass(settle=0.2)
    scheduler.child_changed(NAME)
    await scheduler.update(body(generation=2))  # a spec change wakes at once ...
    await until(lambda: len(recorder.passes) == 2)
    await asyncio.sleep(0.4)
    assert len(recorder.passes) == 2, "... and that pass read the child's change too"
    await scheduler.stop()


async def test_without_settling_a_child_change_wakes_the_owner_at_once() -> None:
    recorder, scheduler = await after_first_pass(settle=0.0)
    scheduler.child_changed(NAME)
    assert scheduler.pending == 1
    await until(lambda: len(recorder.passes) == 2)
    await scheduler.stop()


async def test_a_worker_stopped_while_its_children_settle_is_not_woken() -> None:
    recorder, scheduler = await after_first_pass(settle=0.05)
    scheduler.child_changed(NAME)
    await scheduler.remove("u")
    await asyncio.sleep(0.15)
    assert len(recorder.passes) == 1
    await scheduler.stop()


def test_the_settle_time_is_set_from_the_environment_and_zero_turns_it_off() -> None:
    assert OperatorConfig.from_env({}).child_settle_seconds == 1.0
    assert OperatorConfig.from_env({"ALIASROLL_CHILD_SETTLE_SECONDS": "0"}).child_settle_seconds == 0.0
    assert OperatorConfig.from_env({"ALIASROLL_CHILD_SETTLE_SECONDS": "2.5"}).child_settle_seconds == 2.5
    with pytest.raises(SystemExit, match="ALIASROLL_CHILD_SETTLE_SECONDS='-1' must be zero or more"):
        OperatorConfig.from_env({"ALIASROLL_CHILD_SETTLE_SECONDS": "-1"})


async def test_passes_waiting_on_a_tenant_s_registry_hold_no_slot_another_resource_needs() -> None:
    """Twenty passes wait on registries that do not answer (a first answer waits up to the call's
    deadline); with sixteen slots, another resource's pass still runs at once, and every slot comes
    back when they end."""
    released = asyncio.Event()
    other_ran = asyncio.Event()
    all_ran = asyncio.Event()
    ran: list[str] = []

    async def reconcile(resource: Mapping[str, Any], wake: Wake) -> PassResult:
        name = resource["metadata"]["name"]
        if name.startswith("hostile"):
            async with given_back():
                await released.wait()
        ran.append(name)
        if name == "other":
            other_ran.set()
        if len(ran) == 21:
            all_ran.set()
        return PassResult(next_in=None)

    scheduler = Scheduler(
        reconcile=reconcile,
        forget=lambda uid: None,
        max_concurrent=DEFAULT_MAX_CONCURRENT,
        jitter=0,
        settle=0,
    )
    for i in range(20):
        await scheduler.update(body(name=f"hostile-{i}", uid=f"h{i}"))
    await asyncio.sleep(0.05)
    assert scheduler.running == 20, "every hostile pass started and waits without its slot"
    await scheduler.update(body(name="other", uid="o"))
    await asyncio.wait_for(other_ran.wait(), 2)
    released.set()
    await asyncio.wait_for(all_ran.wait(), 2)
    await asyncio.sleep(0.05)  # the passes' ends give their slots back
    assert scheduler._slots._value == DEFAULT_MAX_CONCURRENT, "a slot was lost or given twice"
    await scheduler.stop()


async def test_a_pass_stopped_while_it_takes_its_slot_again_gives_none_back_twice() -> None:
    slots = asyncio.Semaphore(1)
    slot = PassSlot(slots)
    await slot.acquire()
    entered = asyncio.Event()

    async def waits() -> None:
        with running_in(slot):
            async with given_back():
                entered.set()
                await asyncio.sleep(0.05)

    task = asyncio.create_task(waits())
    await entered.wait()
    await asyncio.wait_for(slots.acquire(), 1)  # another pass takes the slot given back ...
    await asyncio.sleep(0.1)  # ... so when this pass wants it back, it waits
    task.cancel()  # ... and the pass is stopped while it waits for it
    with pytest.raises(asyncio.CancelledError):
        await task
    slot.release()  # the scheduler's own release at the end of the pass: nothing held, nothing given
    slots.release()
    assert slots._value == 1


async def test_a_change_that_asks_for_less_settle_brings_the_wake_forward() -> None:
    """Version mode's gated pods wake their owner after POD_SETTLE, even while a Deployment's change
    waits out the scheduler's own settle (a rollback to a warm version ends on a pod becoming Ready)."""
    recorder, scheduler = await after_first_pass(settle=5.0)
    began = asyncio.get_running_loop().time()
    scheduler.child_changed(NAME)  # a Deployment's status: 5 s
    scheduler.child_changed(NAME, settle=0.05)  # a gated pod: sooner
    scheduler.child_changed(NAME)  # a later Deployment change does not push it back
    await until(lambda: len(recorder.passes) == 2)
    assert asyncio.get_running_loop().time() - began < 1.0
    await asyncio.sleep(0.2)
    assert len(recorder.passes) == 2, "one pass for all three"
    await scheduler.stop()


async def test_a_change_never_settles_longer_than_the_scheduler_asks() -> None:
    recorder, scheduler = await after_first_pass(settle=0.0)
    scheduler.child_changed(NAME, settle=5.0)
    assert scheduler.pending == 1
    await until(lambda: len(recorder.passes) == 2)
    await scheduler.stop()
