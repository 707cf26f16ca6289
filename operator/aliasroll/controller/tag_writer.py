"""Writes the version tags a pass plans (planning/registry_writes.py): where and when each version served,
and how a canary ended.

Tags are bookkeeping, and a rollout must never wait for them. The operator writes them beside
its passes (`DeferredTags`): a pass hands its new tags over and goes on, and they are written
once the rollouts are no longer a burst: fewer than `BURST_PASSES` passes moved a rollout on
(applied or pruned objects, or wrote a status that says something new besides the records) in the
last `QUIET_SECONDS`; at the latest once they have waited `max_delay`. A burst of new resources (a
GitOps sync of hundreds) so gets Ready first, and MLflow's share of the CPU goes to its records
afterwards, while a few canaries measuring now and then hold nothing back. Meanwhile its passes say
Recorded=Unknown/RecordsPending; a refusal makes it Recorded=False/RegistryWriteFailed.
Each registry (tracking URI) has writers of its own, so one that hangs holds back only its own tags.

What the writer holds is a record: one tag key of one model version in one registry, with the value
last planned for it and the resources waiting for it. Its invariants
(tests/unit/controller/test_tag_writer.py):

- Last planned value wins. A record's writes are serialised: one write at a time, and after a
  write that got no answer (it may still land) none for `LANDING_SECONDS`. A value planned while
  another is written goes after it, so an older value never lands after a newer one.
- A record is retried until written, or abandoned: its resource is gone (or this process stopped
  leading) and it is not `lasting` (a canary's outcome, a served span's end); a lasting record of a
  gone resource is written while this process leads, and given up once the fence refuses it or the
  registry refused it `ORPHAN_REFUSALS` times. A pass that no longer plans a record (status moved on:
  @canary named another version, a span left the bounded history) does not take it back.
- Memory is bounded: a registry holds at most `max_queued` records; new ones beyond are not
  accepted (counted in aliasroll_version_tags_dropped_total, logged at most once a minute) and their
  resource's next pass hands them over again.
- Refused writes are retried by the writer, never by waking passes: a record waits
  `RETRY_FIRST_SECONDS`, doubling to `RETRY_MAX_SECONDS`, after each refusal, and an endpoint (a
  registry with one set of credentials) that refuses writes in a row pauses all of its writes as
  long, until one is taken. New credentials (the pass hands a record over with another endpoint)
  are tried at once.
- A resource is woken when its last record is written, and on a refusal only if its last pass was
  not told of one, at most once every `RETRY_MAX_SECONDS`, whatever the registry's words; its passes
  state the refusal in the same words until it clears (the first refusal, and how many of its
  records are refused).

On a failover the old leader's records are dropped (the fence refuses them). The new leader's passes
plan again what status holds: every span of status.history and the ended run of status.lastCanary.
Lost are the records whose source left status before the new leader's first pass: an ended run's
outcome once @canary names another version, a span's end once it left the bounded history.

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
from dataclasses import dataclass, field
from typing import Any

from aliasroll import metrics
from aliasroll.errors import AliasrollError, RegistryUnavailable
from aliasroll.planning.registry_writes import TAG_PREFIX, TagVersion
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
# Tags written at once, per registry, once it is their turn.
WRITERS = 4
# After a refusal a record waits this long before it is tried again, doubling up to the maximum;
# an endpoint refusing writes in a row pauses as long. A refusal wakes a resource at most once
# every RETRY_MAX_SECONDS.
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
# A write that got no answer in time may still land this long after (one tag is one request, of
# at most ALIASROLL_REGISTRY_TIMEOUT, 5 s by default): no other value of its key is written before.
LANDING_SECONDS = 30.0
# Records a registry holds at most (a served span is a few hundred bytes).
MAX_QUEUED = 10_000
# A lasting record of a gone resource is given up after this many refusals (its Secret may be gone).
ORPHAN_REFUSALS = 8
# A full queue is logged at most this often.
FULL_LOG_SECONDS = 60.0

RecordKey = tuple[str, str, str]  # (model, version, tag key)
_OPEN_SPAN = "to now (serving)"


@dataclass(frozen=True)
class TagsState:
    """What a pass may say of its resource's tags: some still to be written, or refused."""

    pending: bool = False
    problems: tuple[str, ...] = ()


def lasting(key: str, value: str) -> bool:
    """Whether a tag is a fact no later pass may plan again once its resource is gone: a canary's
    outcome, or the end of a served span. (An open span's tag is not: written for a resource that is
    gone, it would say "serving" for good.)"""
    if key.startswith(f"{TAG_PREFIX}/canary."):
        return True
    return key.startswith(f"{TAG_PREFIX}/served/") and not value.endswith(_OPEN_SPAN)


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
                metrics.REGISTRY_WRITES.labels("version_tag", error.reason).inc(len(new))
                problems.append(error.message)
                continue
            metrics.REGISTRY_WRITES.labels("version_tag", "written").inc(len(new))
            self._written.wrote(uid, write.version, new)
        return TagsState(problems=tuple(problems))

    def registry_answered(self, endpoint: Endpoint) -> None:
        pass  # nothing waits: every write is made within its pass

    def progressed(self) -> None:
        pass

    def forget(self, uid: str) -> None:
        self._written.forget(uid)


@dataclass
class _Record:
    """One tag of one model version in one registry: the value last planned, and who waits for it."""

    model: str
    version: str
    key: str
    value: str
    endpoint: Endpoint  # of the resource that planned it last (its credentials)
    since: float  # first planned: bounds its wait for the rollouts (max_delay)
    waiters: set[str] = field(default_factory=set)  # uids whose passes planned this value
    refusals: int = 0  # in a row
    not_before: float = 0.0
    refusal: str | None = None  # the registry's word on the last attempt, while refused
    unreachable: bool = False  # the last attempt found no registry answering (not a refusal)

    @property
    def id(self) -> RecordKey:
        return (self.model, self.version, self.key)


@dataclass
class _Resource:
    owner: ResourceRef
    wake: Wake
    records: set[tuple[str, RecordKey]] = field(default_factory=set)  # (tracking URI, record)
    first_refusal: str | None = None  # said until none of its records is refused
    told_refusal: bool = False  # its last pass was told of a refusal
    refusal_woken_at: float | None = None


@dataclass
class _Gate:
    """An endpoint that refused writes in a row: none of its writes start before `until`."""

    refusals: int = 0
    until: float = 0.0
    unreachable: bool = False  # its last refusal was no answer at all


class _Lane:
    """One registry's records and writers."""

    def __init__(self) -> None:
        self.records: dict[RecordKey, _Record] = {}  # in the order first planned
        self.writing: set[RecordKey] = set()
        # Keys whose last write got no answer, and until when it may still land (whether or not a
        # record of the key is still held).
        self.landing: dict[RecordKey, float] = {}
        self.gates: dict[Endpoint, _Gate] = {}
        self.kick = asyncio.Event()  # a record was planned, or a write ended
        self.turned_away = 0  # records not accepted (queue full) since the last warning
        self.warned_at: float | None = None
        self.waiting_for_answer = False  # some write waits out a backoff because nothing answered


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
        max_queued: int = MAX_QUEUED,
        retry_first: float = RETRY_FIRST_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
        landing: float = LANDING_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._registry = registry
        self._written = _Written(registry)
        self._max_delay = max_delay
        self._quiet, self._burst = quiet, max(1, burst)
        self._writers = writers
        self._max_queued = max(1, max_queued)
        self._retry_first, self._retry_max = retry_first, max(retry_first, retry_max)
        self._landing = landing
        self._clock, self._sleep = clock, sleep
        self._progress: collections.deque[float] = collections.deque()  # when passes moved rollouts on
        # Each registry has its own records and writers, as it has its own threads in the poller:
        # one that hangs holds only its own tags back. (By tracking URI: new credentials for a
        # registry do not start writers of their own, and a record is one tag whatever credentials
        # write it.)
        self._lanes: dict[str, _Lane] = {}
        self._resources: dict[str, _Resource] = {}  # by uid: those with records, or told of them
        self._tasks: list[asyncio.Task[None]] = []

    async def stop(self) -> None:
        """Stops the writers (each registry's start with its first tags); records are dropped."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._lanes.clear()
        self._resources.clear()
        self._count()

    @property
    def queued(self) -> int:
        """Records waiting to be written, refused ones included (for tests and logs)."""
        return sum(len(lane.records) for lane in self._lanes.values())

    def progressed(self) -> None:
        """A pass moved a rollout on (applied or pruned objects, or its status says something new
        besides the records): rollouts go first."""
        now = self._clock()
        self._progress.append(now)
        self._forget_progress(before=now - self._quiet)

    def _forget_progress(self, *, before: float) -> None:
        while self._progress and self._progress[0] < before:
            self._progress.popleft()

    # ------------------------------------------------------------------------------ the passes' side

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Sequence[TagVersion], wake: Wake
    ) -> TagsState:
        """Takes a pass's tags: the new ones become records (or update the pass's own records with
        the value planned now); says what its status may say of them."""
        uid = owner.uid
        news = [(write, await self._written.unwritten(uid, endpoint, model, write)) for write in writes]
        resource = self._resources.get(uid)
        if resource is None:
            resource = self._resources[uid] = _Resource(owner, wake)
        resource.owner, resource.wake = owner, wake
        lane = self._lane(endpoint)
        turned_away = changed = False
        for write, new in news:
            for key, value in write.tags.items():
                record_key = (model, write.version, key)
                record = lane.records.get(record_key)
                if (record is None or uid not in record.waiters) and key not in new:
                    continue  # written, or the version holds it
                if record is None and len(lane.records) >= self._max_queued:
                    turned_away = True
                    self._turn_away(lane, endpoint)
                    continue
                changed |= self._plan(lane, endpoint, resource, record_key, value)
        if changed:
            lane.kick.set()
            self._count()
        state = self._state(resource, turned_away=turned_away)
        resource.told_refusal = bool(state.problems)
        return state

    def forget(self, uid: str) -> None:
        """The resource is gone, or this process stopped leading: its records are abandoned, but
        for the lasting ones (an outcome, a span's end) no other resource waits for, which are
        still written while this process leads (after a step-down the fence refuses them and they
        go; the next leader plans again what status holds)."""
        self._written.forget(uid)
        resource = self._resources.pop(uid, None)
        if resource is None:
            return
        for uri, key in resource.records:
            lane = self._lanes.get(uri)
            record = lane.records.get(key) if lane is not None else None
            if lane is None or record is None:
                continue
            record.waiters.discard(uid)
            if not record.waiters and not lasting(record.key, record.value):
                del lane.records[key]
                metrics.VERSION_TAGS_DROPPED.labels("forgotten").inc()
        for lane in self._lanes.values():
            if not lane.records:
                lane.gates.clear()
        self._count()

    def stepped_down(self) -> None:
        """Leadership ended: every record goes, lasting ones included (the next leader plans from
        status what it still holds). For a caller that can tell this from a resource that is gone;
        `forget` of each resource comes to the same once the fence refuses the lasting records."""
        dropped = self.queued
        for lane in self._lanes.values():
            lane.records.clear()
            lane.gates.clear()
        for uid in list(self._resources):
            self._written.forget(uid)
        self._resources.clear()
        if dropped:
            metrics.VERSION_TAGS_DROPPED.labels("not_leading").inc(dropped)
        self._count()

    def _plan(self, lane: _Lane, endpoint: Endpoint, resource: _Resource, key: RecordKey, value: str) -> bool:
        """The value `resource`'s pass planned for `key`: the last planned value wins. True when
        the writers have something new to do."""
        uri, uid, now = endpoint.tracking_uri, resource.owner.uid, self._clock()
        record = lane.records.get(key)
        resource.records.add((uri, key))
        if record is None:
            model, version, tag = key
            lane.records[key] = _Record(model, version, tag, value, endpoint, since=now, waiters={uid})
            return True
        changed = False
        if record.value != value:
            # Those that planned the old value are done with it: they do not plan it again (two
            # resources that plan two values take no turns), and no longer wait for this record.
            for other in record.waiters - {uid}:
                self._written.wrote(other, record.version, {record.key: record.value})
                waiting = self._resources.get(other)
                if waiting is not None:
                    waiting.records.discard((uri, key))
                    self._settled(waiting)
            record.value, record.waiters = value, set()
            changed = True
        record.waiters.add(uid)
        if record.endpoint != endpoint:
            record.endpoint = endpoint
            if record.refusal is not None:  # other credentials: tried at once, not after the backoff
                record.refusals, record.not_before = 0, now
            changed = True
        return changed

    def _state(self, resource: _Resource, *, turned_away: bool = False) -> TagsState:
        refused = [record for record in self._records_of(resource) if record.refusal is not None]
        if not refused:
            resource.first_refusal = None
            return TagsState(pending=bool(resource.records) or turned_away)
        first = resource.first_refusal = resource.first_refusal or refused[0].refusal
        count = f"{len(refused)} version tag {'write is' if len(refused) == 1 else 'writes are'} refused"
        return TagsState(
            pending=True,
            problems=(
                f"{first} ({count}; the operator retries them with backoff, at most "
                f"{self._retry_max:.0f} s apart)",
            ),
        )

    def _records_of(self, resource: _Resource) -> list[_Record]:
        found = []
        for uri, key in resource.records:
            lane = self._lanes.get(uri)
            record = lane.records.get(key) if lane is not None else None
            if record is not None:
                found.append(record)
        return found

    def _turn_away(self, lane: _Lane, endpoint: Endpoint) -> None:
        metrics.VERSION_TAGS_DROPPED.labels("queue_full").inc()
        lane.turned_away += 1
        now = self._clock()
        if lane.warned_at is None or now - lane.warned_at >= FULL_LOG_SECONDS:
            log.warning(
                "%s: %d version tags wait to be written, the most a registry holds; %d new one(s) "
                "not taken since the last such warning (their resources' next passes hand them over "
                "again)",
                endpoint.tracking_uri,
                len(lane.records),
                lane.turned_away,
            )
            lane.warned_at, lane.turned_away = now, 0

    def registry_answered(self, endpoint: Endpoint) -> None:
        """A pass read the registry: writes that wait out a backoff only because it did not answer go
        now (an outage's backoff can have grown to minutes). Writes it refused keep theirs."""
        lane = self._lanes.get(endpoint.tracking_uri)
        if lane is None or not lane.waiting_for_answer:
            return
        now = self._clock()
        for gate in lane.gates.values():
            if gate.unreachable:
                gate.until = min(gate.until, now)
        for record in lane.records.values():
            if record.unreachable:
                record.not_before = min(record.not_before, now)
        lane.waiting_for_answer = False
        lane.kick.set()

    def _lane(self, endpoint: Endpoint) -> _Lane:
        lane = self._lanes.get(endpoint.tracking_uri)
        if lane is None:
            lane = self._lanes[endpoint.tracking_uri] = _Lane()
            self._tasks += [
                asyncio.create_task(self._work(lane), name=f"version tags {endpoint.tracking_uri} {n}")
                for n in range(self._writers)
            ]
        return lane

    def _count(self) -> None:
        metrics.VERSION_TAGS_QUEUED.set(self.queued)

    # ----------------------------------------------------------------------------- the writers' side

    async def _work(self, lane: _Lane) -> None:
        while True:
            lane.kick.clear()
            record, wait = self._take(lane)
            if record is None:
                await self._nap(lane, wait)
                continue
            await self._write(lane, record)

    def _take(self, lane: _Lane) -> tuple[_Record | None, float | None]:
        """The first record due, marked as being written; else how long until one is due (None:
        none is, until a record is planned or a write ends)."""
        now = self._clock()
        self._forget_progress(before=now - self._quiet)
        # Absent new passes, a burst is over once its `burst`-th latest pass is `quiet` old.
        calm = now if len(self._progress) < self._burst else self._progress[-self._burst] + self._quiet
        due: float | None = None
        for key, until in list(lane.landing.items()):
            if until <= now:
                del lane.landing[key]
        for key, record in lane.records.items():
            if key in lane.writing:
                continue  # one write of a key at a time
            gate = lane.gates.get(record.endpoint)
            at = max(
                record.not_before,
                gate.until if gate is not None else 0.0,
                lane.landing.get(key, 0.0),
                min(calm, record.since + self._max_delay),
            )
            if at <= now:
                lane.writing.add(key)
                return record, None
            due = at if due is None else min(due, at)
        return None, None if due is None else due - now

    async def _nap(self, lane: _Lane, wait: float | None) -> None:
        """Until `wait` is up, or a record is planned or a write ends."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(lane.kick.wait())}
        if wait is not None:
            waits.add(asyncio.ensure_future(self._sleep(wait)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _write(self, lane: _Lane, record: _Record) -> None:
        key, value, endpoint = record.id, record.value, record.endpoint
        error: AliasrollError | None = None
        fenced = False
        try:
            await self._registry.set_version_tags(endpoint, record.model, record.version, {record.key: value})
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            fenced = True  # the fence: this process does not lead (now)
        except AliasrollError as failure:
            error = failure
        except Exception as failure:  # never end a writer: say it, and retry as a refusal
            log.exception("version tag write failed: %r", failure)
            error = AliasrollError(f"the tag write failed: {failure!r}")
        finally:
            lane.writing.discard(key)
            lane.kick.set()  # a value planned meanwhile may go now
        current = lane.records.get(key)
        if fenced:
            metrics.REGISTRY_WRITES.labels("version_tag", "not_leading").inc()
            if current is not None:
                self._fenced(lane, current)
        elif error is not None:
            metrics.REGISTRY_WRITES.labels("version_tag", error.reason).inc()
            if isinstance(error, RegistryUnavailable):  # no answer, or an error page: it may still land
                lane.landing[key] = self._clock() + self._landing
            if current is not None:
                self._refused(lane, current, endpoint, error)
        else:
            metrics.REGISTRY_WRITES.labels("version_tag", "written").inc()
            lane.gates.pop(endpoint, None)
            if current is not None:
                self._wrote(lane, current, value)
        self._count()

    def _wrote(self, lane: _Lane, record: _Record, value: str) -> None:
        record.refusals, record.refusal = 0, None  # the registry takes writes again
        if record.value != value:
            return  # a newer value was planned meanwhile: it is written next
        del lane.records[record.id]
        if not lane.records:
            lane.gates.clear()
        for uid in record.waiters:
            self._written.wrote(uid, record.version, {record.key: value})
            resource = self._resources.get(uid)
            if resource is not None:
                resource.records.discard((record.endpoint.tracking_uri, record.id))
                self._settled(resource)

    def _settled(self, resource: _Resource) -> None:
        """One of its records is written (or taken over by another resource's value)."""
        if resource.records:
            return
        resource.first_refusal = None
        metrics.RECORD_WAKES.labels("written").inc()
        resource.wake()  # its next pass says Recorded=True

    def _refused(self, lane: _Lane, record: _Record, endpoint: Endpoint, error: AliasrollError) -> None:
        now = self._clock()
        record.refusals += 1
        record.not_before = now + self._backoff(record.refusals)
        gate = lane.gates.setdefault(endpoint, _Gate())
        gate.refusals += 1
        gate.until = now + self._backoff(gate.refusals)
        record.unreachable = gate.unreachable = isinstance(error, RegistryUnavailable)
        lane.waiting_for_answer = lane.waiting_for_answer or record.unreachable
        if record.refusal is None:
            log.warning(
                "%s: version %s of %r: registry write failed (retried with backoff): %s",
                ", ".join(sorted(self._names(record))) or "a resource that is gone",
                record.version,
                record.model,
                error,
            )
        record.refusal = error.message
        # Last in line: when the endpoint's pause ends, the records it has not refused lately go first.
        del lane.records[record.id]
        lane.records[record.id] = record
        if not record.waiters and record.refusals >= ORPHAN_REFUSALS:
            del lane.records[record.id]
            metrics.VERSION_TAGS_DROPPED.labels("refused").inc()
            log.warning(
                "given up: tag %r of version %s of %r, refused %d times after its resource was gone",
                record.key,
                record.version,
                record.model,
                record.refusals,
            )
            return
        for uid in record.waiters:
            resource = self._resources.get(uid)
            if resource is None:
                continue
            resource.first_refusal = resource.first_refusal or error.message
            if resource.told_refusal:
                continue  # its status says so already
            if resource.refusal_woken_at is not None and now - resource.refusal_woken_at < self._retry_max:
                continue
            resource.refusal_woken_at = now
            metrics.RECORD_WAKES.labels("refused").inc()
            resource.wake()  # its next pass says Recorded=False

    def _fenced(self, lane: _Lane, record: _Record) -> None:
        """The fence refused the write: this process does not lead. A record of a gone resource is
        given up (the next leader plans from status what it still holds); the others wait: if
        leadership ended, their resources are forgotten, else (the fence flickered) they are
        written after all."""
        if record.waiters:
            record.not_before = max(record.not_before, self._clock() + self._retry_first)
            return
        del lane.records[record.id]
        metrics.VERSION_TAGS_DROPPED.labels("not_leading").inc()

    def _names(self, record: _Record) -> list[str]:
        owners = (self._resources.get(uid) for uid in record.waiters)
        return [f"{r.owner.namespace}/{r.owner.name}" for r in owners if r is not None]

    def _backoff(self, refusals: int) -> float:
        return float(min(self._retry_max, self._retry_first * 2 ** min(refusals - 1, 30)))
