"""One shared view of the registry for every ModelDeployment.

Resources subscribe to (endpoint, model) with their poll interval. One loop per endpoint fetches
each subscribed model once per interval (the shortest interval among its subscribers), however many
resources name it, and wakes the subscribers whose answer changed, so an alias move reaches every
resource within one interval. Models that fall due together are fetched together: one call each
while there are few, or one `search_registered_models` sweep (1,000 models a page) once there are
enough that the sweep is cheaper. A failing model is retried with exponential backoff.

Version details are cached separately: a version number never changes what it names, so a READY
version is asked about once (the cache expires after an hour, in case a model is deleted and
registered again under the same name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from aliasroll.errors import ModelNotFound, RegistryError
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.types import Endpoint, VersionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
Wake = Callable[[], None]

READY_VERSION_TTL = 3600.0
# A sweep reads every model of the registry; it pays off while the registry holds at most this many
# models per model we need (get_registered_model ~15 ms a call, a sweep ~0.6 ms a model, measured).
SWEEP_MAX_READ_RATIO = 25


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


@dataclass
class _Entry:
    endpoint: Endpoint
    model: str
    subscribers: dict[Hashable, tuple[float, Wake]] = field(default_factory=dict)
    snapshot: ModelSnapshot | None = None
    snapshot_time: float = 0.0  # clock() of the snapshot, for rescheduling
    next_due: float = 0.0
    failures: int = 0
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
        max_backoff: float = 60.0,
        concurrency: int = 8,
        batch_window: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._sweep_threshold = sweep_threshold
        self._max_backoff = max_backoff
        self._batch_window = batch_window
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="registry")
        self._entries: dict[tuple[Endpoint, str], _Entry] = {}
        self._subscriptions: dict[Hashable, tuple[Endpoint, str]] = {}
        self._loops: dict[Endpoint, asyncio.Task[None]] = {}
        self._kicks: dict[Endpoint, asyncio.Event] = {}
        self._registry_sizes: dict[Endpoint, int] = {}
        self._versions: dict[tuple[Endpoint, str, str], tuple[VersionInfo | None, float]] = {}
        self._version_calls: dict[tuple[Endpoint, str, str], asyncio.Future[VersionInfo | None]] = {}

    async def subscribe(
        self, *, subscriber: Hashable, endpoint: Endpoint, model: str, interval: float, wake: Wake
    ) -> ModelSnapshot:
        """Registers (or moves) a subscription and returns the latest answer, waiting for the first."""
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
            entry.next_due = min(entry.next_due, entry.snapshot_time + interval)
        self._ensure_loop(endpoint)
        await entry.answered.wait()
        assert entry.snapshot is not None
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

    def refresh(self, endpoint: Endpoint, model: str) -> bool:
        """Asks for a fetch now (a registry webhook said the model changed); False if nobody follows it."""
        entry = self._entries.get((endpoint, model))
        if entry is None:
            return False
        entry.next_due = self._clock()
        self._kick(endpoint)
        return True

    async def version(
        self, endpoint: Endpoint, model: str, version: str, *, ttl: float
    ) -> VersionInfo | None:
        """Details of one version (None if it does not exist); concurrent askers share one call."""
        key = (endpoint, model, version)
        cached = self._versions.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        pending = self._version_calls.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._run(self.client.version, endpoint, model, version))
            self._version_calls[key] = pending
            try:
                info = await asyncio.shield(pending)
            finally:
                self._version_calls.pop(key, None)
            keep = READY_VERSION_TTL if info is not None and info.ready else ttl
            self._versions[key] = (info, self._clock() + keep)
            return info
        return await asyncio.shield(pending)

    async def close(self) -> None:
        loops = list(self._loops.values())
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # The per-endpoint loop.

    def _ensure_loop(self, endpoint: Endpoint) -> None:
        self._kick(endpoint)
        task = self._loops.get(endpoint)
        if task is None or task.done():
            self._loops[endpoint] = asyncio.create_task(
                self._loop(endpoint), name=f"registry-poll {endpoint}"
            )

    def _kick(self, endpoint: Endpoint) -> None:
        self._kicks.setdefault(endpoint, asyncio.Event()).set()

    async def _loop(self, endpoint: Endpoint) -> None:
        kick = self._kicks.setdefault(endpoint, asyncio.Event())
        while True:
            kick.clear()
            entries = [entry for entry in self._entries.values() if entry.endpoint == endpoint]
            if not entries:
                self._loops.pop(endpoint, None)
                return
            now = self._clock()
            due = [entry for entry in entries if entry.next_due <= now + self._batch_window]
            if due:
                await self._fetch(endpoint, due)
                continue
            wait = min(entry.next_due for entry in entries) - now
            # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation that
            # arrives just as the event is set, and close() would then wait a whole interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await kick.wait()

    async def _fetch(self, endpoint: Endpoint, due: list[_Entry]) -> None:
        answers: dict[str, dict[str, str] | RegistryError]
        if self._sweep_pays_off(endpoint, len(due)):
            answers = await self._sweep(endpoint, [entry.model for entry in due])
        else:
            results = await asyncio.gather(
                *(self._run(self.client.model_aliases, endpoint, entry.model) for entry in due),
                return_exceptions=True,
            )
            answers = {}
            for entry, result in zip(due, results, strict=True):
                if isinstance(result, RegistryError):
                    answers[entry.model] = result
                elif isinstance(result, BaseException):
                    raise result
                else:
                    answers[entry.model] = result
        now = self._clock()
        for entry in due:
            self._record(entry, answers[entry.model], now=now)

    def _sweep_pays_off(self, endpoint: Endpoint, due: int) -> bool:
        if due < self._sweep_threshold:
            return False
        size = self._registry_sizes.get(endpoint)
        return size is None or size <= due * SWEEP_MAX_READ_RATIO

    async def _sweep(
        self, endpoint: Endpoint, models: list[str]
    ) -> dict[str, dict[str, str] | RegistryError]:
        try:
            everything = await self._run(self.client.all_model_aliases, endpoint)
        except RegistryError as error:
            return dict.fromkeys(models, error)
        self._registry_sizes[endpoint] = len(everything)
        return {
            model: everything[model]
            if model in everything
            else ModelNotFound(f"the registry at {endpoint.tracking_uri} has no registered model {model!r}")
            for model in models
        }

    def _record(self, entry: _Entry, answer: dict[str, str] | RegistryError, *, now: float) -> None:
        if isinstance(answer, RegistryError):
            entry.failures += 1
            snapshot = ModelSnapshot(model=entry.model, aliases=None, error=answer)
            entry.next_due = now + min(self._max_backoff, 2.0 ** (entry.failures - 1))
            log.warning(
                "registry: %s (attempt %d, next in %.0f s)", answer, entry.failures, entry.next_due - now
            )
        else:
            entry.failures = 0
            snapshot = ModelSnapshot(model=entry.model, aliases=answer, error=None)
            entry.next_due = now + entry.interval
        changed = not snapshot.same_answer(entry.snapshot)
        entry.snapshot = snapshot
        entry.snapshot_time = now
        entry.answered.set()
        if changed:
            for _, wake in list(entry.subscribers.values()):
                wake()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
