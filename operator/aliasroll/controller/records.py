"""Writes the version tags a pass plans (planning/records.py): where and when each version served,
and how a canary ended.

Tags are bookkeeping, and a rollout must never wait for them. The operator writes them beside
its passes (`DeferredTags`): a pass hands its new tags over and goes on, and they are written
once the rollouts are no longer a burst: fewer than `BURST_PASSES` passes moved a rollout on
(applied or pruned objects, or wrote a status that says something new besides the records) in the
last `QUIET_SECONDS`; at the latest once they have waited `max_delay`. A burst of new resources (a
GitOps sync of hundreds) so gets Ready first, and MLflow's share of the CPU goes to its records
afterwards, while a few canaries measuring now and then hold nothing back. When a resource's tags
are written, or first refused, it is woken: its next pass says so in the Recorded condition
(Unknown/RecordsPending meanwhile).
Each registry has writers of its own, so one that hangs holds back only its own tags.

`InlineTags` writes them within the pass, for tests that run single passes.

Each tag is written once per process: both remember the ones written, and ask the registry (once
per version, cached) which tags a version already holds, so a restarted operator writes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aliasroll.errors import AliasrollError
from aliasroll.planning.records import TagVersion
from aliasroll.registry.poller import RegistryPoller, Wake
from aliasroll.registry.types import Endpoint
from aliasroll.spec import ResourceRef

log = logging.getLogger(__name__)

# How long a version's tags, read to skip the records it already holds, are trusted (the details of
# a READY version are kept longer: an hour, and the operator's own writes are remembered).
TAGS_READ_TTL = 60.0
# Deferred tags wait while this many passes, or more, moved a rollout on within this many seconds.
QUIET_SECONDS = 2.0
BURST_PASSES = 5
# Tags written at once, once it is their turn.
WRITERS = 4

TagKey = tuple[str, str]  # (version, tag key)


@dataclass(frozen=True)
class TagsState:
    """What a pass may say of its resource's tags: some still to be written, or refused."""

    pending: bool = False
    problems: tuple[str, ...] = ()


class _Written:
    """The tags each resource has written (by uid), and the registry's word on the rest."""

    def __init__(self, registry: RegistryPoller) -> None:
        self._registry = registry
        self._done: dict[str, set[tuple[str, str, str]]] = {}

    async def unwritten(self, uid: str, endpoint: Endpoint, model: str, write: TagVersion) -> dict[str, str]:
        """The tags of `write` that neither this process wrote nor the version holds."""
        done = self._done.setdefault(uid, set())
        new = {k: v for k, v in write.tags.items() if (write.version, k, v) not in done}
        if new:
            new = await self._not_in_registry(endpoint, model, write.version, new)
            done.update((write.version, k, v) for k, v in write.tags.items() if k not in new)
        return new

    def wrote(self, uid: str, version: str, tags: Mapping[str, str]) -> None:
        self._done.setdefault(uid, set()).update((version, k, v) for k, v in tags.items())

    async def _not_in_registry(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> dict[str, str]:
        try:
            info = await self._registry.version(endpoint, model, version, ttl=TAGS_READ_TTL)
        except AliasrollError:
            return dict(tags)  # unknown: writing again is harmless
        held = dict(info.tags) if info is not None else {}
        return {key: value for key, value in tags.items() if held.get(key) != value}

    def forget(self, uid: str) -> None:
        self._done.pop(uid, None)


class InlineTags:
    """Writes a pass's tags in the pass."""

    def __init__(self, registry: RegistryPoller) -> None:
        self._registry = registry
        self._written = _Written(registry)

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Sequence[TagVersion], wake: Wake
    ) -> TagsState:
        uid = owner.uid
        problems: list[str] = []
        for write in writes:
            new = await self._written.unwritten(uid, endpoint, model, write)
            if not new:
                continue
            try:
                await self._registry.set_version_tags(endpoint, model, write.version, new)
            except AliasrollError as error:
                problems.append(error.message)
                continue
            self._written.wrote(uid, write.version, new)
        return TagsState(problems=tuple(problems))

    def progressed(self) -> None:
        pass

    def forget(self, uid: str) -> None:
        self._written.forget(uid)


@dataclass
class _Job:
    owner: ResourceRef
    endpoint: Endpoint
    model: str
    version: str
    tags: dict[str, str]
    wake: Wake
    since: float

    @property
    def uid(self) -> str:
        return self.owner.uid

    def still_queued(self, queued: Mapping[TagKey, str]) -> bool:
        """Whether `queued` still holds this job's tags with its values (none newer, none dropped)."""
        return all(queued.get((self.version, key)) == value for key, value in self.tags.items())


class DeferredTags:
    """Writes a pass's tags after it, when the operator has time (see the module's docstring)."""

    def __init__(
        self,
        registry: RegistryPoller,
        *,
        max_delay: float,
        quiet: float = QUIET_SECONDS,
        burst: int = BURST_PASSES,
        writers: int = WRITERS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._registry = registry
        self._written = _Written(registry)
        self._max_delay = max_delay
        self._quiet, self._burst = quiet, max(1, burst)
        self._writers = writers
        self._clock, self._sleep = clock, sleep
        self._progress: collections.deque[float] = collections.deque()  # when passes moved rollouts on
        # Each registry has its own queue and writers, as it has its own threads in the poller: one
        # that hangs holds only its own tags back.
        # (By tracking URI: new credentials for a registry do not start writers of their own.)
        self._jobs: dict[str, asyncio.Queue[_Job]] = {}
        self._queued: dict[str, dict[TagKey, str]] = {}  # by uid: the tags handed over, not yet written
        self._refused: dict[str, str] = {}  # by uid: the registry's word on the last refused write
        self._tasks: list[asyncio.Task[None]] = []

    async def stop(self) -> None:
        """Stops the writers (each registry's start with its first tags); queued tags are dropped."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._jobs.clear()

    @property
    def queued(self) -> int:
        """Tag writes waiting (for tests and logs)."""
        return sum(len(tags) for tags in self._queued.values())

    def progressed(self) -> None:
        """A pass moved a rollout on (applied or pruned objects, or its status says something new
        besides the records): rollouts go first."""
        now = self._clock()
        self._progress.append(now)
        self._forget_progress(before=now - self._quiet)

    def _forget_progress(self, *, before: float) -> None:
        while self._progress and self._progress[0] < before:
            self._progress.popleft()

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Sequence[TagVersion], wake: Wake
    ) -> TagsState:
        uid = owner.uid
        queued = self._queued.setdefault(uid, {})
        for write in writes:
            new = await self._written.unwritten(uid, endpoint, model, write)
            new = {k: v for k, v in new.items() if queued.get((write.version, k)) != v}
            if not new:
                continue
            job = _Job(owner, endpoint, model, write.version, new, wake, since=self._clock())
            queued.update({(write.version, key): value for key, value in new.items()})
            self._queue(endpoint).put_nowait(job)
        if not queued:
            del self._queued[uid]
            self._refused.pop(uid, None)  # nothing outstanding: an old refusal no longer holds
        refused = self._refused.get(uid)
        return TagsState(pending=bool(queued), problems=(refused,) if refused else ())

    def forget(self, uid: str) -> None:
        """The resource is gone, or this process stopped leading: its queued tags are dropped (the
        next leader's passes plan them again)."""
        self._written.forget(uid)
        self._queued.pop(uid, None)
        self._refused.pop(uid, None)

    def _queue(self, endpoint: Endpoint) -> asyncio.Queue[_Job]:
        jobs = self._jobs.get(endpoint.tracking_uri)
        if jobs is None:
            jobs = self._jobs[endpoint.tracking_uri] = asyncio.Queue()
            self._tasks += [
                asyncio.create_task(self._work(jobs), name=f"version tags {endpoint.tracking_uri} {n}")
                for n in range(self._writers)
            ]
        return jobs

    async def _work(self, jobs: asyncio.Queue[_Job]) -> None:
        while True:
            job = await jobs.get()
            await self._turn(job)
            if not self._current(job):
                continue  # forgotten meanwhile
            error: str | None = None
            try:
                await self._registry.set_version_tags(job.endpoint, job.model, job.version, job.tags)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                continue  # the fence: this process no longer leads, and forgets its queue
            except AliasrollError as failure:
                owner = job.owner
                log.warning("%s/%s: registry write failed: %s", owner.namespace, owner.name, failure)
                error = failure.message
            self._finish(job, error)

    async def _turn(self, job: _Job) -> None:
        """Waits while the rollouts are a burst (`burst` passes moved one on in the last `quiet`
        seconds), at most until `max_delay` is up."""
        while True:
            now = self._clock()
            self._forget_progress(before=now - self._quiet)
            if len(self._progress) < self._burst:
                return
            # Absent new passes, the burst is over once its `burst`-th latest pass is `quiet` old.
            calm = self._progress[-self._burst] + self._quiet
            wait = min(calm, job.since + self._max_delay) - now
            if wait <= 0:
                return
            await self._sleep(wait)

    def _current(self, job: _Job) -> bool:
        queued = self._queued.get(job.uid)
        return queued is not None and job.still_queued(queued)

    def _finish(self, job: _Job, error: str | None) -> None:
        queued = self._queued.get(job.uid, {})
        for key, value in job.tags.items():
            if queued.get((job.version, key)) == value:
                del queued[(job.version, key)]
        if error is None:
            self._written.wrote(job.uid, job.version, job.tags)
            if not queued:
                self._refused.pop(job.uid, None)
                job.wake()  # its next pass says Recorded=True
            return
        if self._refused.get(job.uid) != error:  # said once: the next passes retry it
            self._refused[job.uid] = error
            job.wake()
