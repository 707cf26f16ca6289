"""One worker per ModelDeployment object, so every trigger runs the same level-based pass.

Watch events, registry changes, drift on owned objects and the poll timer only wake the worker; it
reads the latest body and runs a full pass. Passes of one resource never overlap, and wakes that
arrive during a pass coalesce into one more pass. A failed pass is retried with backoff.

Workers are keyed by uid, not by namespace/name: `kubectl replace --force` (and Argo CD's Replace)
deletes an object and creates another under the same name, and Kopf handles the events of different
objects concurrently, so the old object's last events may be handled after the new one's first. A
name is only used to log, and to wake the owner of a changed child (its label names the owner).

Deletions missed by the watch (during a re-list) are caught twice over: a pass that finds its
resource gone stops its worker, and a periodic resync (`plan_resync`) compares workers with a list.

At scale: at most `max_concurrent` passes run at once across all resources (a wake that arrives
while a worker waits for its turn is folded into that pass), and periodic requeues are spread by
`jitter` (a fraction either way), so resources created together do not poll in lockstep forever.
Changes of owned objects come in bursts (a new Deployment's status moves three or four times as its
pods start), so they wake their owner `settle` seconds later, once for the whole burst; spec
changes, registry answers and timers wake at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aliasroll.backoff import Backoff
from aliasroll.controller.reconciler import PassResult
from aliasroll.controller.slots import PassSlot, running_in
from aliasroll.registry.poller import Wake

log = logging.getLogger(__name__)

Uid = str
NamespacedName = tuple[str, str]  # (namespace, name): a resource's name, which another object may reuse
Reconcile = Callable[[Mapping[str, Any], Wake], Awaitable[PassResult]]
Forget = Callable[[Uid], None]
DEFAULT_MAX_CONCURRENT = 16
DEFAULT_JITTER = 0.1
DEFAULT_SETTLE = 1.0
# Version mode's gated pods (spec.rollback): a pod that becomes Ready after its gate went True is what
# lets the version it replaces be unrouted, the last step of a rollback to a warm version; a settle of
# a second there is most of the rollback. A tenth of a second still folds a burst (the gates of all of a
# version's pods, patched in one pass) into one pass.
POD_SETTLE = 0.1


def jittered(
    delay: float | None, jitter: float, *, random_fraction: Callable[[], float] = random.random
) -> float | None:
    """`delay` moved by up to `jitter` of itself, either way (None: no timer)."""
    if delay is None:
        return None
    return delay * (1.0 + jitter * (2.0 * random_fraction() - 1.0))


def identity(body: Mapping[str, Any]) -> tuple[Uid, NamespacedName]:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or ""), (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _essence(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a pass depends on, apart from status (our own status writes must not wake us)."""
    meta = body.get("metadata") or {}
    return (body.get("spec"), meta.get("generation"), meta.get("uid"), meta.get("deletionTimestamp"))


def _created(body: Mapping[str, Any]) -> str:
    # RFC 3339 in UTC with whole seconds, as the API server writes it: compares as a string.
    return str((body.get("metadata") or {}).get("creationTimestamp") or "")


def is_going(body: Mapping[str, Any]) -> bool:
    """Deleted, or being deleted (other controllers' finalizers may keep it listed a while)."""
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


@dataclass(frozen=True)
class ResyncPlan:
    stop: frozenset[Uid]
    start: tuple[Mapping[str, Any], ...]


def plan_resync(
    *,
    listed: Iterable[Mapping[str, Any]],
    heard: Mapping[Uid, int],
    removed: Mapping[Uid, int],
    list_began: int,
) -> ResyncPlan:
    """Compares the workers with a list of the resources, taken while watch events kept arriving.

    `heard` is each worker's position (in the scheduler's count of events) at its last watch
    event, `removed` the position at which workers were removed, `list_began` the position just
    before the list was asked for: events after it may be newer than the list.
    A worker whose resource is not listed is stopped, unless it heard of its resource after the list
    began (the resource may be newer than the list). A listed resource without a worker gets one,
    unless its worker was removed (uids are never reused: it is gone, or going).
    """
    listed = list(listed)
    listed_uids = {identity(body)[0] for body in listed}
    stop = frozenset(uid for uid, at in heard.items() if uid not in listed_uids and at <= list_began)
    start = tuple(
        body
        for body in listed
        if (uid := identity(body)[0]) and uid not in heard and uid not in removed and not is_going(body)
    )
    return ResyncPlan(stop=stop, start=start)


@dataclass
class _Worker:
    uid: Uid
    name: NamespacedName
    body: Mapping[str, Any]
    heard: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    settling: asyncio.TimerHandle | None = None  # a wake after `settle`, for a child's change


class Scheduler:
    def __init__(
        self,
        *,
        reconcile: Reconcile,
        forget: Forget,
        backoff: Backoff | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        jitter: float = DEFAULT_JITTER,
        settle: float = DEFAULT_SETTLE,
    ) -> None:
        self._reconcile = reconcile
        self._forget = forget
        self._backoff = backoff or Backoff()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._jitter = jitter
        self._settle = settle
        self.running = 0  # passes under way, for tests and metrics
        self._workers: dict[Uid, _Worker] = {}
        self._by_name: dict[NamespacedName, set[Uid]] = {}
        self._events = 0  # counts watch events and removals, to order them against a resync's list
        # Uids whose worker was removed, with the position: events that Kopf hands over late for an
        # object already gone must not start a worker again. Pruned by each resync.
        self._removed: dict[Uid, int] = {}

    @property
    def pending(self) -> int:
        """Workers woken and waiting for their next pass (the queue depth)."""
        return sum(1 for worker in self._workers.values() if worker.wake.is_set())

    @property
    def position(self) -> int:
        """Where the scheduler is in the stream of events; take it just before listing, for resync."""
        return self._events

    async def update(self, body: Mapping[str, Any]) -> None:
        """A watch event for the resource: start its worker, or wake it if anything but status changed."""
        uid, name = identity(body)
        self._events += 1
        if is_going(body):
            await self.remove(uid)
            return
        if uid in self._removed:
            return  # a late event of an object already gone
        stale: list[asyncio.Task[None]] = []
        for other_uid in list(self._by_name.get(name, ())):
            other = self._workers[other_uid]
            if other_uid == uid:
                continue
            # A name is free again only once its object is gone: of two objects with one name, the
            # one created earlier no longer exists. (Created in the same second: cannot tell; its
            # DELETED event, its next pass or the resync stops the old worker.)
            if _created(other.body) < _created(body):
                log.info("%s/%s: replaced by a new object (uid %s)", *name, uid)
                stale.append(self._detach(other_uid))
            elif _created(body) < _created(other.body):
                log.info("%s/%s: ignoring an event of the replaced object (uid %s)", *name, uid)
                self._removed[uid] = self._events
                return
        worker = self._workers.get(uid)
        if worker is None:
            worker = self._workers[uid] = _Worker(uid=uid, name=name, body=body, heard=self._events)
            self._by_name.setdefault(name, set()).add(uid)
            worker.task = asyncio.create_task(self._work(worker), name=f"reconcile {name[0]}/{name[1]}")
        else:
            before, worker.body, worker.heard = worker.body, body, self._events
            if _essence(before) != _essence(body):
                worker.wake.set()
        for task in stale:
            await _cancelled(task)

    def wake(self, uid: Uid) -> None:
        worker = self._workers.get(uid)
        if worker is not None:
            worker.wake.set()

    def wake_named(self, name: NamespacedName) -> None:
        """Wakes the resource of that name (both, for the moment an old and a new object overlap)."""
        for uid in self._by_name.get(name, ()):
            self.wake(uid)

    def child_changed(self, name: NamespacedName, *, settle: float | None = None) -> None:
        """An object owned by the named resource changed: its owner is woken `settle` seconds later
        (the scheduler's own unless the caller asks for less), once for every change until then. A
        wake already due, or a pass not yet begun, covers the change as well: a pass reads the latest
        state of every owned object. A change that asks for less brings a later wake forward."""
        wait = self._settle if settle is None else min(settle, self._settle)
        if wait <= 0:
            self.wake_named(name)
            return
        loop = asyncio.get_running_loop()
        for uid in self._by_name.get(name, ()):
            worker = self._workers[uid]
            if worker.wake.is_set():
                continue
            if worker.settling is not None:
                if worker.settling.when() <= loop.time() + wait:
                    continue
                worker.settling.cancel()
            worker.settling = loop.call_later(wait, self._settled, uid)

    def _settled(self, uid: Uid) -> None:
        worker = self._workers.get(uid)
        if worker is not None:
            worker.settling = None
            worker.wake.set()

    async def remove(self, uid: Uid) -> None:
        """The object is gone (or going): stop its worker; other objects of the same name are untouched."""
        self._events += 1
        self._removed[uid] = self._events
        if uid in self._workers:
            await _cancelled(self._detach(uid))

    async def resync(self, listed: Iterable[Mapping[str, Any]], *, list_began: int) -> ResyncPlan:
        """Applies `plan_resync` to a list of the watched resources taken from position `list_began`."""
        listed = list(listed)
        plan = plan_resync(
            listed=listed,
            heard={uid: worker.heard for uid, worker in self._workers.items()},
            removed=self._removed,
            list_began=list_began,
        )
        for uid in plan.stop:
            worker = self._workers.get(uid)
            if worker is not None:
                log.warning("%s/%s: no longer exists (missed deletion, uid %s); stopping", *worker.name, uid)
            await self.remove(uid)
        for body in plan.start:
            uid, name = identity(body)
            log.warning("%s/%s: had no worker (missed event, uid %s); starting", *name, uid)
            await self.update(body)
        # A removed uid not listed is gone for good: no event will name it again.
        listed_uids = {identity(body)[0] for body in listed}
        self._removed = {
            uid: at for uid, at in self._removed.items() if uid in listed_uids or at > list_began
        }
        return plan

    async def stop(self) -> None:
        for uid in list(self._workers):
            await _cancelled(self._detach(uid))

    def _detach(self, uid: Uid, *, cancel: bool = True) -> asyncio.Task[None]:
        """Forgets the worker at once (so no new wake reaches it); the caller awaits its task."""
        worker = self._workers.pop(uid)
        if worker.settling is not None:
            worker.settling.cancel()
        names = self._by_name.get(worker.name)
        if names is not None:
            names.discard(uid)
            if not names:
                del self._by_name[worker.name]
        self._forget(uid)
        assert worker.task is not None
        if cancel:
            worker.task.cancel()
        return worker.task

    async def _work(self, worker: _Worker) -> None:
        namespace, name = worker.name
        failures = 0
        while True:
            # The pass may give its slot back while it waits on a tenant's endpoint (slots.py).
            slot = PassSlot(self._slots)
            await slot.acquire()
            try:
                worker.wake.clear()  # after the wait for a slot: wakes during it are this pass's
                if worker.settling is not None:  # so are the changes it waits to settle
                    worker.settling.cancel()
                    worker.settling = None
                self.running += 1
                try:
                    with running_in(slot):
                        result = await self._reconcile(worker.body, lambda: self.wake(worker.uid))
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # a pass must never kill the worker: log, back off, retry
                    log.exception("%s/%s: reconcile pass failed: %s", namespace, name, error)
                    result = PassResult(next_in=None, failed=None)
                    failures += 1
                else:
                    failures = failures + 1 if result.failed is not None and result.back_off else 0
                finally:
                    self.running -= 1
            finally:
                slot.release()
            if result.gone:
                log.info(
                    "%s/%s: the resource is gone (uid %s); stopping its worker", namespace, name, worker.uid
                )
                self._events += 1
                self._removed[worker.uid] = self._events
                self._detach(worker.uid, cancel=False)  # this very task: it ends by returning
                return
            delay = jittered(result.next_in, self._jitter)
            if failures:
                backoff = self._backoff.delay(failures)
                delay = backoff if delay is None else min(delay, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see RegistryPoller._loop
                    await worker.wake.wait()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
