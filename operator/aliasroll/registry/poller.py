"""One shared view of the registry for every ModelDeployment.

Resources subscribe to (endpoint, model) with their poll interval. One loop per endpoint fetches
each subscribed model once a poll (a little more often than the shortest interval among its
subscribers: `poll_period`), however many resources name it, and wakes the subscribers whose answer
changed, so an alias move reaches every resource, passes included, within one interval. A model is
read at once when first followed, then on a grid shared by every model of its registry and interval,
so they fall due together and are fetched together: one call each while there are few, or one
`search_registered_models` sweep (1,000 models a page) once there are enough that the sweep is
cheaper (50 models: one sweep costs the MLflow server 45 ms of CPU, 50 reads 470 ms). A failing
model is retried with backoff, then rejoins the grid.

Registries are kept apart, as tenants: each endpoint has its own few threads, so one that hangs
(accepts connections, never answers) holds only its own; a subscriber waits a bounded time for a
first answer and otherwise gets an error answer; a loop that crashes is logged and restarted.

A sweep is a paged listing that can miss a model (pages shift when models are created or deleted
between them), so an alias that a sweep no longer shows is confirmed with a direct read before it
is published: a missing @canary would otherwise end a canary at once.

A sweep lists the whole registry, however large, so it has a deadline (`sweep_deadline`, half the
answer timeout): past it the loop stops waiting for it, and the models someone waits for (a first
follower, a push) are read one by one while the sweep runs on. A late sweep still tells the
registry's size; one that needed more than a page turns sweeps of that registry off for an hour
(`SLOW_SWEEP_PAUSE`): the registry is too large for a sweep to fit in a poll.

A model is read by one read at a time (`_Read`), and a read's answer counts only while the model is
followed and the read still holds it: a model whose last follower left meanwhile is dropped from the
read, the other models of the batch are recorded as usual, and a new follower starts a read of its
own. A refresh (a push, an alias write) that arrives while the model is being read is followed by
another read as soon as that one ends: the read under way may have seen the registry before the
change. Subscribers are woken only when the answer changes, so a registry that keeps failing the
same way costs retries, not passes.

Version details are cached separately: a version number never changes what it names, so a READY
version is asked about once (the cache expires after an hour, in case a model is deleted and
registered again under the same name) while the model is followed.

What is kept for an endpoint (its loop, threads, version cache, size, grids: the endpoint is the key,
credentials included) goes when its last follower leaves, so a resource that cycles its trackingUri
or a Secret that rotates leaves nothing behind. An endpoint whose URL is not an allowed destination
(`destinations`, aliasroll.egress) is never followed: a subscriber gets DestinationRefused at once,
and no loop, read or retry starts for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from aliasroll import metrics
from aliasroll.backoff import Backoff
from aliasroll.egress import Destinations
from aliasroll.errors import (
    DestinationRefused,
    ModelNotFound,
    RegistryAnswerTooLarge,
    RegistryError,
    RegistryUnavailable,
)
from aliasroll.outbound import not_called
from aliasroll.registry.client import SEARCH_PAGE_SIZE, RegistryClient
from aliasroll.registry.types import Endpoint, VersionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
# Asks a resource's worker for another pass (the registry's answer changed, a child changed, ...).
Wake = Callable[[], None]
Answer = dict[str, str] | RegistryError  # one model's aliases, or why the registry gave none

READY_VERSION_TTL = 3600.0
# A sweep reads every model of the registry; it pays off while the registry holds at most this many
# models per model we need (get_registered_model ~15 ms a call, a sweep ~0.6 ms a model, measured).
SWEEP_MAX_READ_RATIO = 25
# After a sweep of more than one page that answered only past its deadline, the registry's models
# are read one by one for this long. (A late sweep of one page is a slow call, like any other.)
SLOW_SWEEP_PAUSE = 3600.0


# A model is read this much more often than its interval (at most a tenth of it): a move seen by
# the poll is applied by the passes it wakes before the interval is up, so `pollInterval` bounds how
# long a move waits, passes included (20 resources at rest: about 0.3 s).
POLL_LEAD_SECONDS = 1.0


def poll_period(interval: float) -> float:
    return interval - min(POLL_LEAD_SECONDS, interval / 10)


@dataclass(frozen=True)
class ModelSnapshot:
    """The registry's latest answer about one model: its aliases, or why there is no answer."""

    model: str
    aliases: Mapping[str, str] | None
    error: RegistryError | None

    def same_answer(self, other: ModelSnapshot | None) -> bool:
        if other is None:
            return False
        mine = None if self.error is None else self.error.reason
        theirs = None if other.error is None else other.error.reason
        return self.aliases == other.aliases and mine == theirs


def loses_an_alias(previous: ModelSnapshot | None, answer: Answer) -> bool:
    """True when `answer` lacks an alias `previous` had (the model missing altogether included)."""
    if previous is None or not previous.aliases:
        return False
    if isinstance(answer, ModelNotFound):
        return True
    if isinstance(answer, RegistryError):
        return False  # no answer at all: what runs keeps running anyway
    return any(alias not in answer for alias in previous.aliases)


@dataclass(eq=False)
class _Read:
    """One batch of reads under way (one sweep, or direct reads), and the models it answers for."""

    endpoint: Endpoint
    entries: list[_Entry]
    started: float = 0.0  # clock() when it began
    # A sweep past its deadline: the loop no longer waits for it (see RegistryPoller._wants_read).
    overdue: bool = False


@dataclass(eq=False)
class _Entry:
    endpoint: Endpoint
    model: str
    # Never empty while the entry is in RegistryPoller._entries: the last follower to leave removes it.
    subscribers: dict[Hashable, tuple[float, Wake]] = field(default_factory=dict)
    snapshot: ModelSnapshot | None = None
    snapshot_time: float = 0.0  # clock() of the snapshot, for rescheduling
    next_due: float = 0.0
    failures: int = 0
    # Wall-clock time of the latest change of answer (the registry's own time of a pushed alias move
    # when a push brought the read forward), and the subscribers that have not yet applied it.
    changed_at: float | None = None
    pushed_at: float | None = None
    unapplied: set[Hashable] = field(default_factory=set)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    read: _Read | None = None  # the read under way, if any
    # A refresh came after `read` started: another read follows as soon as it ends.
    read_again: bool = False
    # clock() when this operator's last alias write of the model returned: a read that began before
    # it answers for the registry before the write, and is not recorded (RegistryPoller._finish).
    written: float = -math.inf

    @property
    def interval(self) -> float:
        return min(interval for interval, _ in self.subscribers.values())


class RegistryPoller:
    def __init__(
        self,
        client: RegistryClient,
        *,
        sweep_threshold: int = 25,
        backoff: Backoff | None = None,
        concurrency_per_registry: int = 4,
        answer_timeout: float = 10.0,
        batch_window: float = 0.25,
        sweep_deadline: float | None = None,
        destinations: Destinations | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        # A refused destination is never followed: its subscribers get DestinationRefused at once.
        self._destinations = destinations
        self._sweep_threshold = sweep_threshold
        self._backoff = backoff or Backoff()
        self._concurrency = concurrency_per_registry
        self._answer_timeout = answer_timeout
        self._batch_window = batch_window
        # A first follower waits `answer_timeout`: half of it for a sweep, the rest for the direct
        # reads that take over when the sweep is late.
        self._sweep_deadline = answer_timeout / 2 if sweep_deadline is None else sweep_deadline
        self._clock = clock
        # Everything below that is keyed by endpoint goes when the endpoint's last follower leaves
        # (its loop ends: _supervise), or, for an endpoint nobody follows (a write for a resource
        # that is gone), when its last call ends (_run).
        self._lanes: dict[Endpoint, ThreadPoolExecutor] = {}
        self._lane_calls: dict[Endpoint, int] = {}
        self._entries: dict[tuple[Endpoint, str], _Entry] = {}
        self._subscriptions: dict[Hashable, tuple[Endpoint, str]] = {}
        self._loops: dict[Endpoint, asyncio.Task[None]] = {}
        self._kicks: dict[Endpoint, asyncio.Event] = {}
        self._crashes: dict[Endpoint, int] = {}
        self._registry_sizes: dict[Endpoint, int] = {}
        self._sweeps: dict[Endpoint, asyncio.Task[None]] = {}  # at most one sweep per registry
        self._sweeps_off_until: dict[Endpoint, float] = {}
        self._grids: dict[tuple[Endpoint, float], float] = {}  # (endpoint, interval) -> its first tick
        self._versions: dict[tuple[Endpoint, str, str], tuple[VersionInfo | None, float]] = {}
        self._version_calls: dict[tuple[Endpoint, str, str], asyncio.Task[VersionInfo | None]] = {}

    async def subscribe(
        self, *, subscriber: Hashable, endpoint: Endpoint, model: str, interval: float, wake: Wake
    ) -> ModelSnapshot:
        """Registers (or moves) a subscription and returns the latest answer.

        Waits for the first answer at most `answer_timeout` seconds; then the answer is a
        RegistryUnavailable error (the pass keeps what runs), and the subscriber is woken once the
        registry does answer.
        """
        key = (endpoint, model)
        if (refused := self._refusal(endpoint)) is not None:
            self.unsubscribe(subscriber)  # whatever it followed before, it follows nothing now
            return ModelSnapshot(model=model, aliases=None, error=refused)
        previous = self._subscriptions.get(subscriber)
        if previous is not None and previous != key:
            self.unsubscribe(subscriber)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(endpoint=endpoint, model=model, next_due=self._clock())
        entry.subscribers[subscriber] = (interval, wake)
        self._subscriptions[subscriber] = key
        # A shorter interval than the one scheduled takes effect now, not after the old wait.
        if entry.snapshot is not None and entry.failures == 0:
            entry.next_due = min(
                entry.next_due, self._next_tick(endpoint, interval, after=entry.snapshot_time)
            )
        self._ensure_loop(endpoint)
        if entry.snapshot is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._answer_timeout):  # not wait_for: see _loop
                    await entry.answered.wait()
        if entry.snapshot is None:
            return ModelSnapshot(model=model, aliases=None, error=self._no_answer(endpoint))
        return entry.snapshot

    def unsubscribe(self, subscriber: Hashable) -> None:
        key = self._subscriptions.pop(subscriber, None)
        if key is None:
            return
        entry = self._entries.get(key)
        if entry is not None:
            entry.subscribers.pop(subscriber, None)
            if not entry.subscribers:
                del self._entries[key]
                for cached in [cached for cached in self._versions if cached[:2] == key]:
                    del self._versions[cached]
                self._kick(key[0])

    def refresh(self, model: str, endpoint: Endpoint | None = None, *, moved_at: float | None = None) -> int:
        """Reads `model` again at once (a push said it changed), on every endpoint or only `endpoint`.

        Returns how many (endpoint, model) subscriptions were woken: 0 means nobody follows it.
        Only the read is brought forward; what it finds goes through the usual comparison, so a
        push that changes nothing wakes no resource. `moved_at` (wall clock) is when the registry
        says the alias moved, for the move-to-applied latency.
        """
        now = self._clock()
        woken = 0
        for (entry_endpoint, entry_model), entry in self._entries.items():
            if entry_model != model or (endpoint is not None and entry_endpoint != endpoint):
                continue
            entry.pushed_at = moved_at
            self._read_now(entry, now=now)
            woken += 1
        return woken

    def take_change(self, subscriber: Hashable) -> float | None:
        """When the answer the subscriber follows last changed (wall clock), once per change: its
        pass that just succeeded applied that change."""
        key = self._subscriptions.get(subscriber)
        entry = None if key is None else self._entries.get(key)
        if entry is None or subscriber not in entry.unapplied:
            return None
        entry.unapplied.discard(subscriber)
        return entry.changed_at

    async def version(
        self, endpoint: Endpoint, model: str, version: str, *, ttl: float
    ) -> VersionInfo | None:
        """Details of one version (None if it does not exist); concurrent askers share one call.

        Raises RegistryUnavailable when the registry does not answer within `answer_timeout`.
        """
        if (refused := self._refusal(endpoint)) is not None:
            raise refused
        key = (endpoint, model, version)
        cached = self._versions.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        pending = self._version_calls.get(key)
        if pending is None:
            pending = asyncio.create_task(self._fetch_version(key, ttl=ttl), name=f"registry-version {key}")
            # Retrieved here, so a failure nobody waited for (all askers timed out) is not logged
            # as "never retrieved"; askers get it through the shield.
            pending.add_done_callback(lambda task: task.cancelled() or task.exception())
            self._version_calls[key] = pending
        try:
            async with asyncio.timeout(self._answer_timeout):
                return await asyncio.shield(pending)
        except TimeoutError:
            raise self._no_answer(endpoint) from None

    async def set_alias(self, endpoint: Endpoint, model: str, alias: str, version: str) -> None:
        await self._write(endpoint, model, self.client.set_alias, endpoint, model, alias, version)
        self._read_soon(endpoint, model)

    async def change_alias(
        self, endpoint: Endpoint, model: str, alias: str, *, expect: str, to: str | None
    ) -> dict[str, str]:
        """Moves (or, to None, removes) `alias` only while it still names `expect`, read just before
        (RegistryClient.change_alias); returns the aliases as read. The model is read again at once
        either way, so the next pass sees the registry as it is now."""
        found = await self._write(
            endpoint, model, self.client.change_alias, endpoint, model, alias, expect, to
        )
        after = dict(found)
        if found.get(alias) == expect:  # written
            if to is None:
                after.pop(alias, None)
            else:
                after[alias] = to
        self._learn_write(endpoint, model, after)
        self._read_soon(endpoint, model)
        return found

    async def delete_alias(self, endpoint: Endpoint, model: str, alias: str) -> None:
        await self._write(endpoint, model, self.client.delete_alias, endpoint, model, alias)
        self._read_soon(endpoint, model)

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        await self._write(endpoint, model, self.client.set_version_tags, endpoint, model, version, tags)

    async def _write(self, endpoint: Endpoint, model: str, call: Callable[..., T], *args: object) -> T:
        """A write (an alias move, tags) on the endpoint's own threads; returns the call's answer.
        Raises the mapped registry error, or RegistryUnavailable after `answer_timeout`."""
        if (refused := self._refusal(endpoint)) is not None:
            raise refused
        try:
            async with asyncio.timeout(self._answer_timeout):
                return await self._run(endpoint, call, *args)
        except TimeoutError:
            raise self._no_answer(endpoint) from None

    def _learn_write(self, endpoint: Endpoint, model: str, aliases: Mapping[str, str]) -> None:
        """Takes what an alias write left in the registry as the model's answer at once (its
        subscribers are woken: the resource acts on its own write). A read after it then finds a
        human's move, even one straight back to the value before the write, as a change; and a read
        that began before the write is not recorded over it (_finish)."""
        entry = self._entries.get((endpoint, model))
        if entry is None:
            return
        now = self._clock()
        entry.written = now
        self._record(entry, dict(aliases), now=now)

    def _read_soon(self, endpoint: Endpoint, model: str) -> None:
        """After an alias write the model's aliases are read again at once, so the next pass sees
        what was written. Tags change no alias: a tag write (one per resource when versions start
        serving) reads nothing again."""
        entry = self._entries.get((endpoint, model))
        if entry is not None:
            self._read_now(entry, now=self._clock())

    def _read_now(self, entry: _Entry, *, now: float) -> None:
        """Reads the model at once; if a read of it is under way, once more when that read ends (it
        may have seen the registry before whatever asked for this one)."""
        entry.next_due = now
        if entry.read is not None:
            entry.read_again = True
        self._kick(entry.endpoint)

    async def close(self) -> None:
        tasks = [*self._loops.values(), *self._version_calls.values(), *self._sweeps.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in self._lanes.values():
            # A thread blocked on a silent registry ends with its own timeout; nothing waits for it.
            lane.shutdown(wait=False, cancel_futures=True)
        self._lanes.clear()

    def _refusal(self, endpoint: Endpoint) -> DestinationRefused | None:
        if self._destinations is None:
            return None
        reason = self._destinations.check(endpoint.tracking_uri)
        if reason is None:
            return None
        return DestinationRefused(f"the registry at {endpoint.tracking_uri} {not_called(reason)}")

    def _no_answer(self, endpoint: Endpoint) -> RegistryUnavailable:
        return RegistryUnavailable(
            f"the registry at {endpoint.tracking_uri} did not answer in time "
            f"({self._answer_timeout:.0f} s); the running versions keep serving"
        )

    async def _fetch_version(self, key: tuple[Endpoint, str, str], *, ttl: float) -> VersionInfo | None:
        endpoint, model, version = key
        try:
            info = await self._run(endpoint, self.client.version, endpoint, model, version)
        finally:
            self._version_calls.pop(key, None)
        keep = READY_VERSION_TTL if info is not None and info.ready else ttl
        if (endpoint, model) in self._entries:  # else nobody follows the model any more: not kept
            self._versions[key] = (info, self._clock() + keep)
        return info

    # The per-endpoint loop.

    def _ensure_loop(self, endpoint: Endpoint) -> None:
        self._kick(endpoint)
        task = self._loops.get(endpoint)
        if task is None or task.done():
            self._loops[endpoint] = asyncio.create_task(
                self._supervise(endpoint), name=f"registry-poll {endpoint}"
            )

    def _kick(self, endpoint: Endpoint) -> None:
        self._kicks.setdefault(endpoint, asyncio.Event()).set()

    async def _supervise(self, endpoint: Endpoint) -> None:
        """Runs the endpoint's loop until nobody follows the endpoint; restarts it if it crashes."""
        while True:
            try:
                await self._loop(endpoint)
            except Exception:  # a bug, or an error the client does not map: never end silently
                crashes = self._crashes[endpoint] = self._crashes.get(endpoint, 0) + 1
                delay = self._backoff.delay(crashes)
                log.exception(
                    "registry: the poll loop for %s crashed (%d in a row); restarting in %.1f s",
                    endpoint,
                    crashes,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            break
        self._forget_endpoint(endpoint)

    def _forget_endpoint(self, endpoint: Endpoint) -> None:
        """Nobody follows the endpoint any more: what was kept for it goes (memory, and the
        credentials its key holds, which may be rotated ones)."""
        self._loops.pop(endpoint, None)
        self._crashes.pop(endpoint, None)
        self._kicks.pop(endpoint, None)
        self._registry_sizes.pop(endpoint, None)
        self._sweeps_off_until.pop(endpoint, None)
        for grid in [grid for grid in self._grids if grid[0] == endpoint]:
            del self._grids[grid]
        for cached in [cached for cached in self._versions if cached[0] == endpoint]:
            del self._versions[cached]
        if not self._lane_calls.get(endpoint):
            lane = self._lanes.pop(endpoint, None)
            if lane is not None:
                lane.shutdown(wait=False)

    async def _loop(self, endpoint: Endpoint) -> None:
        kick = self._kicks.setdefault(endpoint, asyncio.Event())
        while True:
            kick.clear()
            entries = [entry for entry in self._entries.values() if entry.endpoint == endpoint]
            if not entries:
                return
            now = self._clock()
            due = [entry for entry in entries if self._wants_read(entry, now=now)]
            if due:
                await self._fetch(endpoint, due)
                self._crashes.pop(endpoint, None)
                continue
            waits = [entry.next_due - now for entry in entries if entry.read is None]
            # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation that
            # arrives just as the event is set, and close() would then wait a whole interval.
            # (No timeout: every model is in a late sweep, whose end kicks the loop.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(min(waits), 0.0) if waits else None):
                    await kick.wait()

    def _wants_read(self, entry: _Entry, *, now: float) -> bool:
        if entry.read is None:
            return entry.next_due <= now + self._batch_window
        # A late sweep keeps the models nobody waits for; a model someone waits for (its first
        # answer, a push) is taken from it and read on its own.
        return entry.read.overdue and (entry.snapshot is None or entry.read_again)

    async def _fetch(self, endpoint: Endpoint, due: list[_Entry]) -> None:
        """Reads the due models: one sweep, waited for at most `sweep_deadline`, or a call each."""
        read = _Read(endpoint=endpoint, entries=due, started=self._clock())
        for entry in due:
            entry.read, entry.read_again = read, False
        if not self._sweep_pays_off(endpoint, len(due)):
            await self._read_directly(read)
            return
        sweep = self._sweeps[endpoint] = asyncio.create_task(
            self._sweep(read), name=f"registry-sweep {endpoint}"
        )
        sweep.add_done_callback(lambda task: self._sweep_ended(read, task))
        done, _ = await asyncio.wait({sweep}, timeout=self._sweep_deadline)
        if sweep in done:
            sweep.result()  # what the sweep raised restarts the loop, as any other crash
            return
        read.overdue = True
        log.warning(
            "registry: a sweep of %s has not answered in %.1f s; models read one by one meanwhile",
            endpoint,
            self._sweep_deadline,
        )

    def _sweep_ended(self, read: _Read, task: asyncio.Task[None]) -> None:
        if self._sweeps.get(read.endpoint) is task:
            del self._sweeps[read.endpoint]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here in any case; the loop raises it if it still waits
        if error is not None and read.overdue:
            log.error("registry: a late sweep of %s failed", read.endpoint, exc_info=error)

    async def _read_directly(self, read: _Read) -> None:
        answers: dict[str, Answer] = {}
        unexpected: BaseException | None = None
        try:
            answers, unexpected = await self._read_each(
                read.endpoint, [entry.model for entry in read.entries]
            )
        finally:
            self._finish(read, answers)
        if unexpected is not None:
            raise unexpected

    async def _sweep(self, read: _Read) -> None:
        endpoint = read.endpoint
        answers: dict[str, Answer] = {}
        unexpected: BaseException | None = None
        try:
            swept = await self._sweep_answers(endpoint, [entry.model for entry in read.entries])
            doubtful = [
                entry.model
                for entry in read.entries
                if self._holds(read, entry)
                and entry.model in swept
                and loses_an_alias(entry.snapshot, swept[entry.model])
            ]
            confirmed: dict[str, Answer] = {}
            if doubtful:
                log.info("registry: confirming aliases a sweep of %s no longer shows: %s", endpoint, doubtful)
                confirmed, unexpected = await self._read_each(endpoint, doubtful)
            # A doubtful answer is published only once confirmed.
            answers = {model: answer for model, answer in swept.items() if model not in doubtful}
            answers.update(confirmed)
        finally:
            self._finish(read, answers)
        if unexpected is not None:
            raise unexpected

    def _holds(self, read: _Read, entry: _Entry) -> bool:
        """True while `read` answers for the entry: not taken over by a later read, still followed."""
        return entry.read is read and self._entries.get((entry.endpoint, entry.model)) is entry

    def _finish(self, read: _Read, answers: Mapping[str, Answer]) -> None:
        """Ends `read`: records its answers for the models it still holds. A model it has no answer
        for (a call that failed in a way the client does not map) stays due."""
        now = self._clock()
        for entry in read.entries:
            if entry.read is not read:
                continue  # taken over by a later read
            followed = self._holds(read, entry)
            entry.read = None
            if read.started < entry.written:
                entry.next_due = now  # it saw the registry before this operator's write: read again
                continue
            if followed and entry.model in answers:  # else its followers left: nobody to tell
                self._record(entry, answers[entry.model], now=now)
        self._kick(read.endpoint)

    async def _read_each(
        self, endpoint: Endpoint, models: list[str]
    ) -> tuple[dict[str, Answer], BaseException | None]:
        """Each model's answer, and the first error the client does not map (a bug), if any: the
        other models' answers are recorded before it is raised."""
        results = await asyncio.gather(
            *(self._run(endpoint, self.client.model_aliases, endpoint, model) for model in models),
            return_exceptions=True,
        )
        answers: dict[str, Answer] = {}
        unexpected: BaseException | None = None
        for model, result in zip(models, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RegistryError):
                unexpected = unexpected or result
            else:
                answers[model] = result
        return answers, unexpected

    def _sweep_pays_off(self, endpoint: Endpoint, due: int) -> bool:
        if due < self._sweep_threshold:
            return False
        if endpoint in self._sweeps or self._clock() < self._sweeps_off_until.get(endpoint, -math.inf):
            return False  # a late sweep still runs, or the registry is too large for one in time
        size = self._registry_sizes.get(endpoint)
        return size is None or size <= due * SWEEP_MAX_READ_RATIO

    async def _sweep_answers(self, endpoint: Endpoint, models: list[str]) -> dict[str, Answer]:
        started = self._clock()
        try:
            everything = await self._run(endpoint, self.client.all_model_aliases, endpoint)
        except RegistryAnswerTooLarge:
            # A page of the registry does not fit the answer budget: its models are read one by one
            # (no answer here keeps them due; the next pass of the loop reads them directly).
            self._sweeps_off_until[endpoint] = self._clock() + SLOW_SWEEP_PAUSE
            log.warning(
                "registry: a sweep of %s answered more than the answer budget: its models are read "
                "one by one for the next %.0f s",
                endpoint,
                SLOW_SWEEP_PAUSE,
            )
            return {}
        except RegistryError as error:
            return dict.fromkeys(models, error)
        self._registry_sizes[endpoint] = len(everything)
        took = self._clock() - started
        if took > self._sweep_deadline and len(everything) > SEARCH_PAGE_SIZE:
            self._sweeps_off_until[endpoint] = self._clock() + SLOW_SWEEP_PAUSE
            log.warning(
                "registry: a sweep of %s (%d models) took %.1f s, more than %.1f s: its models are read "
                "one by one for the next %.0f s",
                endpoint,
                len(everything),
                took,
                self._sweep_deadline,
                SLOW_SWEEP_PAUSE,
            )
        return {
            model: everything[model]
            if model in everything
            else ModelNotFound(f"the registry at {endpoint.tracking_uri} has no registered model {model!r}")
            for model in models
        }

    def _record(self, entry: _Entry, answer: Answer, *, now: float) -> None:
        if isinstance(answer, RegistryError):
            entry.failures += 1
            snapshot = ModelSnapshot(model=entry.model, aliases=None, error=answer)
            entry.next_due = now + self._backoff.delay(entry.failures)
            log.warning(
                "registry: %s (attempt %d, next in %.0f s)", answer, entry.failures, entry.next_due - now
            )
        else:
            entry.failures = 0
            snapshot = ModelSnapshot(model=entry.model, aliases=answer, error=None)
            entry.next_due = self._next_tick(entry.endpoint, entry.interval, after=now)
        if entry.read_again:
            entry.next_due = now  # a refresh came while this read was under way: read once more
        changed = not snapshot.same_answer(entry.snapshot)
        moved = changed and entry.snapshot is not None and snapshot.error is None
        if moved:
            entry.changed_at = entry.pushed_at if entry.pushed_at is not None else time.time()
            entry.unapplied = set(entry.subscribers)
        if moved or not entry.read_again:  # else the pushed move may be the next read's to find
            entry.pushed_at = None
        entry.snapshot = snapshot
        entry.snapshot_time = now
        entry.answered.set()
        if changed:
            for _, wake in list(entry.subscribers.values()):
                wake()

    def _next_tick(self, endpoint: Endpoint, interval: float, *, after: float) -> float:
        """The first tick after `after` of the grid shared by the registry's models of that interval.
        Ticks are `poll_period(interval)` apart: a move is seen, and its passes are done, within
        one interval."""
        first = self._grids.setdefault((endpoint, interval), after)
        period = poll_period(interval)
        return first + (math.floor((after - first) / period) + 1) * period

    async def _run(self, endpoint: Endpoint, fn: Callable[..., T], *args: object) -> T:
        """Runs a blocking call on the endpoint's own threads (created on first use)."""
        lane = self._lanes.get(endpoint)
        if lane is None:
            lane = self._lanes[endpoint] = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix=f"registry {endpoint.tracking_uri}"
            )
        self._lane_calls[endpoint] = self._lane_calls.get(endpoint, 0) + 1
        try:
            return await asyncio.get_running_loop().run_in_executor(lane, _timed, fn, *args)
        finally:
            # A call still running in its thread after a cancellation ends by its own deadline.
            self._lane_calls[endpoint] -= 1
            if not self._lane_calls[endpoint]:
                del self._lane_calls[endpoint]
                if endpoint not in self._loops and (idle := self._lanes.pop(endpoint, None)) is not None:
                    idle.shutdown(wait=False)


def _timed(fn: Callable[..., T], *args: object) -> T:
    """Runs one registry call, counted by call and outcome, with its latency."""
    call = getattr(fn, "__name__", "call")
    began = time.perf_counter()
    outcome = "ok"
    try:
        return fn(*args)
    except RegistryError as error:
        outcome = error.reason
        raise
    except Exception:
        outcome = "Error"
        raise
    finally:
        metrics.REGISTRY_CALL_SECONDS.labels(call).observe(time.perf_counter() - began)
        metrics.REGISTRY_CALLS.labels(call, outcome).inc()
