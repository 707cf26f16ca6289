"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics.

Two (or more) replicas run; one leads. Each candidate reads the Lease every retry period. The holder
renews it (a replace carrying the resourceVersion it last saw: optimistic concurrency, so of two
writers one gets 409 Conflict and has lost). Another takes it once it has seen no change to the
record for the record's leaseDurationSeconds, measured on its own monotonic clock from when it
first saw that record (never from the holder's renewTime, which comes from another clock), or at
once when the holder released it (no holderIdentity).

The fence (write_fence.py): a leader that has not renewed within the renew deadline (shorter than
the lease duration) closes it at once, cancelling its in-flight passes and stopping their writes,
before any other candidate may take the lease. Kopf's peering only pauses handlers and does not
fence writes; this does.

`decide` is the whole decision, pure; `LeaderElector` does the I/O around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from aliasroll import metrics
from aliasroll.config import OperatorConfig
from aliasroll.controller.write_fence import Fence

log = logging.getLogger(__name__)


def candidate_identity(pod_name: str | None, hostname: str) -> str:
    """The pod's name (the downward API's POD_NAME) and a random suffix: a restarted container in
    the same pod is a new candidate, never mistaken for the holder it was before its restart."""
    return f"{pod_name or hostname}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ElectionTiming:
    """client-go's three durations. A follower takes over `lease_duration` after it last saw the
    record change; the leader stops writing `renew_deadline` after its last successful renewal,
    strictly earlier; both act every `retry_period`."""

    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """What is wrong with these durations (None: usable)."""
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            return (
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} s, {self.renew_deadline:g} s, {self.lease_duration:g} s"
            )
        if self.lease_duration != int(self.lease_duration):
            return f"the lease duration must be whole seconds, got {self.lease_duration:g}"
        return None


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the decision needs it; equality is client-go's "the record changed"."""

    holder: str | None
    duration: float
    renew_time: datetime | None = None
    acquire_time: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Candidate:
    """This process's side: who it is and, when leading, when it last renewed (monotonic)."""

    identity: str
    leading: bool = False
    renewed_at: float = 0.0


class Action(StrEnum):
    CREATE = "create"  # no Lease yet: create it holding it
    ACQUIRE = "acquire"  # released or expired: take it over (replace at the seen resourceVersion)
    RENEW = "renew"  # ours: renew it
    FOLLOW = "follow"  # another's, and fresh: wait
    STEP_DOWN = "step_down"  # was leading, may no longer write


@dataclass(frozen=True)
class Decision:
    action: Action
    wait: float  # seconds until the next look, if the action does not change things first
    why: str


def decide(
    *,
    me: Candidate,
    record: LeaseRecord | None,
    observed_at: float,
    read_failed: bool,
    now: float,
    timing: ElectionTiming,
) -> Decision:
    """What a candidate does now, given the record it last read and when it first saw that record.

    `record` None with `read_failed` False: no Lease exists. `read_failed`: the last read (or
    write) failed, `record` is the last one known.
    """
    if me.leading:
        deadline = me.renewed_at + timing.renew_deadline
        if now >= deadline:
            return Decision(Action.STEP_DOWN, timing.retry_period, "not renewed within the renew deadline")
        if record is not None and not read_failed and record.holder != me.identity:
            return Decision(Action.STEP_DOWN, timing.retry_period, f"the lease is held by {record.holder}")
        # Failed attempts are retried, but the deadline is kept to the instant.
        return Decision(Action.RENEW, min(timing.retry_period, deadline - now), "ours")
    if read_failed:
        return Decision(Action.FOLLOW, timing.retry_period, "the lease could not be read")
    if record is None:
        return Decision(Action.CREATE, timing.retry_period, "no lease yet")
    if record.holder == me.identity:
        # Ours on record but not leading here (a renewal answered too late): take it again with
        # a fresh acquisition, never resume writing on an old one.
        return Decision(Action.ACQUIRE, timing.retry_period, "held under our name, not leading")
    if not record.holder:
        return Decision(Action.ACQUIRE, timing.retry_period, "released")
    expires = observed_at + record.duration
    if now >= expires:
        return Decision(
            Action.ACQUIRE, timing.retry_period, f"{record.holder} has not renewed for {record.duration:g} s"
        )
    # Look again right when it would expire, if that comes before the next period.
    return Decision(Action.FOLLOW, min(timing.retry_period, expires - now), f"held by {record.holder}")


def record_of(lease: Lease) -> LeaseRecord:
    spec = lease.spec or LeaseSpec()
    return LeaseRecord(
        holder=spec.holderIdentity or None,
        duration=float(spec.leaseDurationSeconds or 0),
        renew_time=spec.renewTime,
        acquire_time=spec.acquireTime,
        transitions=spec.leaseTransitions or 0,
    )


def taken_by(me: str, previous: LeaseRecord | None, *, duration: int, now: datetime) -> LeaseSpec:
    """The spec that claims (or renews) the lease for `me`: acquireTime and the count of
    transitions change only when the holder does."""
    ours = previous is not None and previous.holder == me
    transitions = previous.transitions if previous is not None else 0
    return LeaseSpec(
        holderIdentity=me,
        leaseDurationSeconds=duration,
        acquireTime=previous.acquire_time if ours and previous is not None else now,
        renewTime=now,
        leaseTransitions=transitions if ours or previous is None else transitions + 1,
    )


def with_spec(lease: Lease, spec: LeaseSpec) -> Lease:
    """The same object (name, resourceVersion: the replace is conditional on it) with a new spec."""
    return Lease(metadata=lease.metadata, spec=spec)


OnLeading = Callable[[], Coroutine[Any, Any, None]]
OnSteppedDown = Callable[[], None]


class LeaderElector:
    """Keeps (or waits for) the Lease; raises and closes the fence; releases it on close."""

    def __init__(
        self,
        *,
        client: AsyncClient,
        name: str,
        namespace: str,
        identity: str,
        timing: ElectionTiming,
        fence: Fence,
        on_leading: OnLeading,
        on_stepped_down: OnSteppedDown = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self.name, self.namespace = name, namespace
        self.me = Candidate(identity=identity)
        self._timing = timing
        self._fence = fence
        self._on_leading = on_leading
        self._on_stepped_down = on_stepped_down
        fence.bind(lambda: self.leading)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lease: Lease | None = None  # the last object read or written (its resourceVersion)
        self._record: LeaseRecord | None = None
        self._observed_at = clock()
        self._read_failed = False
        self._task: asyncio.Task[None] | None = None
        self._leading_task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        # Also false past the deadline when the loop itself is late (a busy event loop).
        return self.me.leading and self._clock() < self.me.renewed_at + self._timing.renew_deadline

    def start(self) -> None:
        log.info(
            "leader election: lease %s/%s as %s (lease %g s, renew deadline %g s, retry %g s)",
            self.namespace,
            self.name,
            self.me.identity,
            self._timing.lease_duration,
            self._timing.renew_deadline,
            self._timing.retry_period,
        )
        self._task = asyncio.create_task(self._run(), name="leader election")

    async def close(self) -> None:
        """Stops electing; a leader stops writing first, then releases the lease so another leads
        at once (client-go's ReleaseOnCancel)."""
        for task in (self._task, self._leading_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.me.leading:
            self._step_down("shutting down", released=True)
            await self._release()
        await self._client.close()

    async def _run(self) -> None:
        while True:
            try:
                wait = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # never end quietly: a leader that stops renewing must step down
                log.exception("leader election: unexpected error; trying again")
                self._read_failed = True
                wait = self._timing.retry_period
            if self.me.leading:  # never sleep past the deadline: step down on the instant
                remaining = self.me.renewed_at + self._timing.renew_deadline - self._clock()
                if remaining <= 0:
                    self._step_down("not renewed within the renew deadline")
                else:
                    wait = min(wait, remaining)
            await asyncio.sleep(max(0.0, wait))

    async def _step(self) -> float:
        """One look at the Lease, the decision and its write; returns the wait until the next."""
        await self._read()
        decision = decide(
            me=self.me,
            record=self._record,
            observed_at=self._observed_at,
            read_failed=self._read_failed,
            now=self._clock(),
            timing=self._timing,
        )
        if decision.action is Action.STEP_DOWN:
            self._step_down(decision.why)
        elif decision.action is not Action.FOLLOW and await self._claim(decision):
            return self._timing.retry_period
        return decision.wait

    async def _read(self) -> None:
        """Reads the Lease, unless this leader holds a fresh copy of its own (it renews from it)."""
        if self.me.leading and self._lease is not None and not self._read_failed:
            return
        try:
            async with asyncio.timeout(self._attempt_timeout()):
                lease = await self._client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code == 404:
                self._seen(None)
                return
            self._failed("reading", error)
        except Exception as error:  # network, TLS, timeouts: try again
            self._failed("reading", error)
        else:
            self._seen(lease)

    async def _claim(self, decision: Decision) -> bool:
        current = self._lease
        if decision.action is not Action.CREATE and current is None:
            return False  # nothing to replace until the next read succeeds
        claimed_at = self._clock()  # before the request: the deadline counts from here
        spec = taken_by(
            self.me.identity,
            self._record,
            duration=int(self._timing.lease_duration),
            now=self._wall_clock(),
        )
        try:
            async with asyncio.timeout(self._attempt_timeout()):
                if decision.action is Action.CREATE:
                    lease = await self._client.create(
                        Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=spec)
                    )
                else:
                    assert current is not None
                    lease = await self._client.replace(with_spec(current, spec))
        except ApiError as error:
            if error.status.code in (404, 409):
                # Another candidate wrote first (or it was deleted): read again before anything
                # else. A leader steps down if the read shows another holder, or at its deadline.
                self._lease, self._read_failed = None, True
                log.log(
                    logging.WARNING if self.me.leading else logging.DEBUG,
                    "leader election: %s of lease %s/%s refused: %s",
                    decision.action,
                    self.namespace,
                    self.name,
                    error.status.reason,
                )
                return False
            self._failed(f"{decision.action} of", error)
            return False
        except Exception as error:
            self._failed(f"{decision.action} of", error)
            return False
        self._seen(lease)
        self.me = replace(self.me, renewed_at=claimed_at)
        if not self.me.leading:
            self._start_leading(decision.why)
        return True

    def _attempt_timeout(self) -> float:
        """A leader's request may not outlast its deadline; a follower's, one retry period."""
        if self.me.leading:
            return max(0.0, self.me.renewed_at + self._timing.renew_deadline - self._clock())
        return self._timing.retry_period

    def _seen(self, lease: Lease | None) -> None:
        record = None if lease is None else record_of(lease)
        if record != self._record:
            self._observed_at = self._clock()
        self._lease, self._record, self._read_failed = lease, record, False

    def _failed(self, what: str, error: BaseException) -> None:
        self._read_failed = True
        level = logging.WARNING if self.me.leading else logging.DEBUG
        log.log(level, "leader election: %s lease %s/%s failed: %r", what, self.namespace, self.name, error)

    def _start_leading(self, why: str) -> None:
        self.me = replace(self.me, leading=True)
        log.info("leader election: leading (%s); resyncing every resource", why)
        metrics.LEADER.set(1)
        metrics.LEADERSHIP_CHANGES.labels("acquired").inc()
        self._fence.raise_()
        self._leading_task = asyncio.create_task(self._on_leading(), name="leadership resync")

    def _step_down(self, why: str, *, released: bool = False) -> None:
        cut = self._fence.close()
        if self._leading_task is not None:
            self._leading_task.cancel()
        self._on_stepped_down()
        self.me = replace(self.me, leading=False)
        metrics.LEADER.set(0)
        metrics.LEADERSHIP_CHANGES.labels("released" if released else "lost").inc()
        log.log(
            logging.INFO if released else logging.WARNING,
            "leader election: no longer leading (%s); %d pass(es) in flight cancelled, writing stopped",
            why,
            cut,
        )

    async def _release(self) -> None:
        if self._lease is None or self._record is None:
            return
        # client-go releases by clearing the holder and shortening the duration to 1 s.
        released = LeaseSpec(
            holderIdentity=None,
            leaseDurationSeconds=1,
            acquireTime=self._record.acquire_time,
            renewTime=self._wall_clock(),
            leaseTransitions=self._record.transitions,
        )
        try:
            async with asyncio.timeout(self._timing.retry_period):
                try:
                    await self._client.replace(with_spec(self._lease, released))
                except ApiError as error:
                    if error.status.code != 409:
                        raise
                    # A renewal cut off by the shutdown may have landed: release what is there, if ours.
                    lease = await self._client.get(Lease, self.name, namespace=self.namespace)
                    if record_of(lease).holder != self.me.identity:
                        return
                    await self._client.replace(with_spec(lease, released))
        except Exception as error:  # the lease then expires by itself
            log.warning("leader election: releasing lease %s/%s failed: %r", self.namespace, self.name, error)
        else:
            log.info("leader election: lease %s/%s released", self.namespace, self.name)


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def elector_for(
    config: OperatorConfig,
    *,
    fence: Fence,
    on_leading: OnLeading,
    on_stepped_down: OnSteppedDown = lambda: None,
    field_manager: str,
) -> LeaderElector | None:
    """The elector the configuration asks for (None: leader election off, this process leads)."""
    if not config.leader_election:
        return None
    timing = ElectionTiming(
        lease_duration=config.lease_duration_seconds,
        renew_deadline=config.lease_renew_deadline_seconds,
        retry_period=config.lease_retry_period_seconds,
    )
    if (problem := timing.problem()) is not None:
        raise SystemExit(
            f"{problem}: set ALIASROLL_LEASE_RETRY_PERIOD, ALIASROLL_LEASE_RENEW_DEADLINE and "
            "ALIASROLL_LEASE_DURATION accordingly"
        )
    namespace = config.lease_namespace
    if namespace is None:
        try:
            namespace = Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or None
        except OSError:
            namespace = None
    if namespace is None:
        raise SystemExit(
            "ALIASROLL_LEADER_ELECTION is on but the Lease's namespace is unknown: set "
            "ALIASROLL_LEASE_NAMESPACE (or POD_NAMESPACE from the downward API)"
        )
    return LeaderElector(
        # A client of its own: renewals never queue behind passes for a connection.
        client=AsyncClient(field_manager=field_manager),
        name=config.lease_name,
        namespace=namespace,
        identity=candidate_identity(config.pod_name, socket.gethostname()),
        timing=timing,
        fence=fence,
        on_leading=on_leading,
        on_stepped_down=on_stepped_down,
    )
