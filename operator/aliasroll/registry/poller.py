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

Version details are cached separately: a version number never changes what it names, so a READY
version is asked about once (the cache expires after an hour, in case a model is deleted and
registered again under the same name).
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
from aliasroll.errors import ModelNotFound, RegistryError, RegistryUnavailable
from aliasroll.registry.client import RegistryClient
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


@dataclass
class _Entry:
    endpoint: Endpoint
    model: str
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._sweep_threshold = sweep_threshold
        self._backoff = backoff or Backoff()
        self._concurrency = concurrency_per_registry
        self._answer_timeout = answer_timeout
        self._batch_window = batch_window
        self._clock = clock
        self._lanes: dict[Endpoint, ThreadPoolExecutor] = {}
        self._entries: dict[tuple[Endpoint, str], _Entry] = {}
        self._subscriptions: dict[Hashable, tuple[Endpoint, str]] = {}
        self._loops: dict[Endpoint, asyncio.Task[None]] = {}
        self._kicks: dict[Endpoint, asyncio.Event] = {}
        self._crashes: dict[Endpoint, int] = {}
        self._registry_sizes: dict[Endpoint, int] = {}
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
            entry.next_due = now
            entry.pushed_at = moved_at
            self._kick(entry_endpoint)
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

    async def delete_alias(self, endpoint: Endpoint, model: str, alias: str) -> None:
        await self._write(endpoint, model, self.client.delete_alias, endpoint, model, alias)
        self._read_soon(endpoint, model)

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        await self._write(endpoint, model, self.client.set_version_tags, endpoint, model, version, tags)

    async def _write(self, endpoint: Endpoint, model: str, call: Callable[..., None], *args: object) -> None:
        """A write (an alias move, tags) on the endpoint's own threads. Raises the mapped registry
        error, or RegistryUnavailable after `answer_timeout`."""
        try:
            async with asyncio.timeout(self._answer_timeout):
                await self._run(endpoint, call, *args)
        except TimeoutError:
            raise self._no_answer(endpoint) from None

    def _read_soon(self, endpoint: Endpoint, model: str) -> None:
        """After an alias write the model's aliases are read again at once, so the next pass sees
        what was written. Tags change no alias: a tag write (one per resource when versions start
        serving) reads nothing again."""
        entry = self._entries.get((endpoint, model))
        if entry is not None:
            entry.next_due = self._clock()
            self._kick(endpoint)

    async def close(self) -> None:
        tasks = [*self._loops.values(), *self._version_calls.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in self._lanes.values():
            # A thread blocked on a silent registry ends with its own timeout; nothing waits for it.
            lane.shutdown(wait=False, cancel_futures=True)
        self._lanes.clear()

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
        self._loops.pop(endpoint, None)
        self._crashes.pop(endpoint, None)
        for grid in [grid for grid in self._grids if grid[0] == endpoint]:
            del self._grids[grid]
        lane = self._lanes.pop(endpoint, None)
        if lane is not None:
            lane.shutdown(wait=False)  # calls under way still deliver their answers

    async def _loop(self, endpoint: Endpoint) -> None:
        kick = self._kicks.setdefault(endpoint, asyncio.Event())
        while True:
            kick.clear()
            entries = [entry for entry in self._entries.values() if entry.endpoint == endpoint]
            if not entries:
                return
            now = self._clock()
            due = [entry for entry in entries if entry.next_due <= now + self._batch_window]
            if due:
                await self._fetch(endpoint, due)
                self._crashes.pop(endpoint, None)
                continue
            wait = min(entry.next_due for entry in entries) - now
            # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation that
            # arrives just as the event is set, and close() would then wait a whole interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await kick.wait()

    async def _fetch(self, endpoint: Endpoint, due: list[_Entry]) -> None:
        models = [entry.model for entry in due]
        if self._sweep_pays_off(endpoint, len(due)):
            answers = await self._sweep(endpoint, models)
            doubtful = [entry.model for entry in due if loses_an_alias(entry.snapshot, answers[entry.model])]
            if doubtful:
                log.info("registry: confirming aliases a sweep of %s no longer shows: %s", endpoint, doubtful)
                answers.update(await self._read_each(endpoint, doubtful))
        else:
            answers = await self._read_each(endpoint, models)
        now = self._clock()
        for entry in due:
            self._record(entry, answers[entry.model], now=now)

    async def _read_each(self, endpoint: Endpoint, models: list[str]) -> dict[str, Answer]:
        results = await asyncio.gather(
            *(self._run(endpoint, self.client.model_aliases, endpoint, model) for model in models),
            return_exceptions=True,
        )
        answers: dict[str, Answer] = {}
        for model, result in zip(models, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, RegistryError):
                raise result
            answers[model] = result
        return answers

    def _sweep_pays_off(self, endpoint: Endpoint, due: int) -> bool:
        if due < self._sweep_threshold:
            return False
        size = self._registry_sizes.get(endpoint)
        return size is None or size <= due * SWEEP_MAX_READ_RATIO

    async def _sweep(self, endpoint: Endpoint, models: list[str]) -> dict[str, Answer]:
        try:
            everything = await self._run(endpoint, self.client.all_model_aliases, endpoint)
        except RegistryError as error:
            return dict.fromkeys(models, error)
        self._registry_sizes[endpoint] = len(everything)
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
        changed = not snapshot.same_answer(entry.snapshot)
        if changed and entry.snapshot is not None and snapshot.error is None:
            entry.changed_at = entry.pushed_at if entry.pushed_at is not None else time.time()
            entry.unapplied = set(entry.subscribers)
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
        return await asyncio.get_running_loop().run_in_executor(lane, _timed, fn, *args)


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
