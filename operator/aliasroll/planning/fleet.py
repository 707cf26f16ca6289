"""The versions a resource runs, one Deployment each: which take requests, which stay warm, which go.

The workload model of issue 23 (docs/design/rollback-window.md): a Deployment per version, all behind
the resource's Service (the replicas router) or a backend each (the gatewayAPI router), and a pod
readiness gate, `aliasroll.io/routed`, set by the operator on each version's pods, that decides which
versions take requests. Not wired into the planner yet: this is the pure decision it will call,

    decide(running, wanted, sizes, settings, switch, now) -> Decision

Each version gets one role:

- production, canary: the versions the aliases name (the canary only while one is wanted). Routed, and
  sized from the router's split: a version that must grow gets its size at once (all its new pods start
  in parallel); production covers what the canary's available pods do not carry yet; a shrinking
  canary gives up only what production's available pods cover.
- leaving: named no more but still routed. It keeps (never grows) the pods the named versions do not
  carry yet, and is unrouted once they carry every pod asked for (spec.replicas): requests never lose
  the capacity asked, and a version the aliases no longer name stops taking them as soon as it can.
- warm: left @production less than `window` seconds ago while serving it, among the `maxWarm` that left
  it last; ready but not routed, at its floor. Moving @production back to it changes routing only
  (and scales it up from its floor, in parallel): a fast rollback.
- every other version goes (`Decision.remove`).

A version the aliases do not name is never routed again once unrouted. A fast move (@production to a
warm or still-leaving version: a rollback; to the canary's version: a promotion) is a `Switch`, kept in
status from the alias move until no leaving version is routed any more; that pass reports it as a
`FastMove` with the seconds it took (the `FastRollback` event). Window 0 keeps nothing warm: a version
goes as soon as it is unrouted, as today.

Everything a pass decides on is in the cluster (the Deployments, their pods, the gate) or in status
(`status.warm`, `status.fastSwitch`, planning/fleet_status.py), so a restarted operator decides the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple


class VersionId(NamedTuple):
    """A version as the pods pin it: a registered model's version (a renamed model's are others)."""

    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model}/{self.version}"


class Role(StrEnum):
    PRODUCTION = "production"
    CANARY = "canary"
    LEAVING = "leaving"
    WARM = "warm"


class Split(StrEnum):
    """How the router turns routed pods into shares of requests."""

    PODS = "pods"  # replicas: one Service over every routed pod; a version's share is its share of them
    WEIGHTS = "weights"  # gatewayAPI: a backend per version, weighted by the route


class MoveKind(StrEnum):
    ROLLBACK = "rollback"  # @production to a version still warm (or still leaving)
    PROMOTION = "promotion"  # @production to the canary's version, whose pods are warm and routed


@dataclass(frozen=True)
class RollbackSettings:
    """spec.rollback: how long a version stays warm after it leaves @production, how many stay, and
    at how many pods (None: spec.replicas). The defaults keep nothing warm (today's behaviour)."""

    window: int = 0  # seconds, 0 to spec.MAX_ROLLBACK_WINDOW_SECONDS
    max_warm: int = 1  # 1 to spec.MAX_WARM_VERSIONS
    floor: int | None = None  # 1 to spec.MAX_WARM_FLOOR, at most spec.replicas in effect

    def floor_for(self, replicas: int) -> int:
        return replicas if self.floor is None else min(self.floor, replicas)


@dataclass(frozen=True)
class RunningVersion:
    """One version's Deployment as the cluster runs it, and what status remembers of it."""

    id: VersionId
    replicas: int  # the Deployment's spec.replicas
    available: int  # its Ready pods (routed and passing the probe): what takes requests now
    ready: int  # its pods passing the readiness probe, routed or not: Ready as soon as routed
    routed: bool  # the gate is True on its pods
    was: Role | None = None  # the role the last pass gave it (status); None: not in status
    left_production: datetime | None = None  # status.warm[].since: when it stopped serving production


@dataclass(frozen=True)
class Wanted:
    """What the aliases name this pass (planning/version_decision.py, the canary run)."""

    production: VersionId
    canary: VersionId | None = None  # None: no canary is wanted (none, ended, or production's version)
    canary_weight: int = 0  # percent asked now (the canary run's step, or spec.canary.weight)


@dataclass(frozen=True)
class Sizes:
    """The router's split: pods of each named version once the split is in place."""

    replicas: int  # spec.replicas: what routed available pods must never fall below
    production: int
    canary: int = 0
    split: Split = Split.PODS


@dataclass(frozen=True)
class Switch:
    """A fast move under way: from the alias move until no leaving version is routed."""

    kind: MoveKind
    source: VersionId
    target: VersionId
    since: datetime


@dataclass(frozen=True)
class FastMove:
    """A fast move that ended this pass, for the `FastRollback` event."""

    kind: MoveKind
    source: VersionId
    target: VersionId
    seconds: float


@dataclass(frozen=True)
class VersionPlan:
    id: VersionId
    role: Role
    replicas: int
    routed: bool  # the gate to set on its pods
    share: int = 0  # percent of requests it takes now (WEIGHTS: its backend's weight)
    left_production: datetime | None = None  # kept in status.warm[].since (warm, or leaving to be warm)
    warm_until: datetime | None = None
    # Leaving: how many of its pods stay routed (what the named versions do not carry yet); the others
    # are unrouted one by one as the named versions' pods become Ready, and stay (warm) if it is kept.
    routed_pods: int | None = None


@dataclass(frozen=True)
class Decision:
    versions: tuple[VersionPlan, ...]  # production, canary, leaving, then warm ones, newest first
    remove: tuple[VersionId, ...]  # Deployments that go
    switch: Switch | None = None  # a fast move under way after this pass (kept in status)
    fast_move: FastMove | None = None  # a fast move that ended in this pass

    def get(self, version: VersionId) -> VersionPlan | None:
        return next((plan for plan in self.versions if plan.id == version), None)

    def with_role(self, role: Role) -> tuple[VersionPlan, ...]:
        return tuple(plan for plan in self.versions if plan.role is role)


def decide(
    *,
    running: Sequence[RunningVersion],
    wanted: Wanted,
    sizes: Sizes,
    settings: RollbackSettings,
    switch: Switch | None,
    now: datetime,
) -> Decision:
    """The pass's decision for every version: named ones sized and routed, leaving ones held while
    needed, warm ones at their floor, the rest removed; and the fast move under way or ended."""
    by_id = {version.id: version for version in running}
    targets = named_targets(wanted, sizes)
    named = _named(targets, wanted, by_id, sizes.replicas)
    keep = _leaving_pods(by_id, wanted, sizes)
    left = _left(by_id, wanted, targets, now)
    kept = _warm_set(left, settings, now)
    floor = settings.floor_for(sizes.replicas)
    others: list[VersionPlan] = []
    for version in sorted(by_id.values(), key=lambda v: v.id):
        if version.id in targets:
            continue
        since = left.get(version.id) if version.id in kept else None
        if keep.get(version.id, 0) > 0:
            # A leaving version never grows: its floor counts only up to what it runs.
            pods = max(keep[version.id], min(floor, version.replicas) if since is not None else 0)
            others.append(
                VersionPlan(
                    version.id, Role.LEAVING, pods, True, left_production=since, routed_pods=keep[version.id]
                )
            )
        elif since is not None:
            until = since + timedelta(seconds=settings.window)
            others.append(VersionPlan(version.id, Role.WARM, floor, False, 0, since, until))
    others.sort(key=lambda plan: (plan.role is Role.WARM, -(_epoch(plan.left_production)), plan.id))
    plans = _with_shares([*named, *others], by_id, wanted, sizes)
    kept_ids = {plan.id for plan in plans}
    remove = tuple(sorted(version for version in by_id if version not in kept_ids))
    under_way = _switch(by_id, wanted, switch, now)
    if under_way is not None and not any(plan.routed for plan in plans if plan.role is Role.LEAVING):
        seconds = (now - under_way.since).total_seconds()
        ended = FastMove(under_way.kind, under_way.source, under_way.target, seconds)
        return Decision(versions=plans, remove=remove, switch=None, fast_move=ended)
    return Decision(versions=plans, remove=remove, switch=under_way)


def named_targets(wanted: Wanted, sizes: Sizes) -> dict[VersionId, int]:
    """The versions the aliases name, with the router's size for each. A canary is named only while
    one is wanted with pods of its own."""
    targets = {wanted.production: sizes.production}
    if wanted.canary is not None and wanted.canary != wanted.production and sizes.canary > 0:
        targets[wanted.canary] = sizes.canary
    return targets


def _named(
    targets: Mapping[VersionId, int],
    wanted: Wanted,
    by_id: Mapping[VersionId, RunningVersion],
    total: int,
) -> list[VersionPlan]:
    """Production covers what the canary's available pods do not carry yet (so a canary that does
    not come up never costs capacity); a canary grows at once and shrinks only as production's
    available pods cover it. Both are routed: their pods take requests as they pass the probe."""
    production = wanted.production
    canary = next((version for version in targets if version != production), None)
    covered_canary = min(_available(by_id, canary), targets[canary]) if canary is not None else 0
    production_pods = max(targets[production], total - covered_canary)
    plans = [VersionPlan(production, Role.PRODUCTION, production_pods, routed=True)]
    if canary is not None:
        size, current = targets[canary], by_id[canary].replicas if canary in by_id else 0
        if current > size:
            covered = min(_available(by_id, production), production_pods)
            size = min(current, max(size, total - covered))
        plans.append(VersionPlan(canary, Role.CANARY, size, routed=True))
    return plans


def _leaving_pods(
    by_id: Mapping[VersionId, RunningVersion], wanted: Wanted, sizes: Sizes
) -> dict[VersionId, int]:
    """Pods each routed version the aliases no longer name keeps: what the named versions' available
    pods do not carry yet, taken from those with the most available pods first. Never more than it
    runs; 0 is unrouted. (A ReplicaSet removes pods that are not ready first, so what it keeps of
    its available pods is at least what the count says.) With weights the canary's backend carries
    only its weight, so the production side alone must reach production's size."""
    targets = named_targets(wanted, sizes)
    if sizes.split is Split.WEIGHTS:
        deficit = sizes.production - _available(by_id, wanted.production)
    else:
        deficit = sizes.replicas - sum(_available(by_id, version) for version in targets)
    leaving = [v for v in by_id.values() if v.id not in targets and v.routed]
    leaving.sort(key=lambda v: (-v.available, -_epoch(v.left_production), v.id))
    keep: dict[VersionId, int] = {}
    for version in leaving:
        keep[version.id] = min(version.replicas, max(deficit, 0))
        deficit -= min(keep[version.id], version.available)
    return keep


def _left(
    by_id: Mapping[VersionId, RunningVersion],
    wanted: Wanted,
    targets: Mapping[VersionId, int],
    now: datetime,
) -> dict[VersionId, datetime]:
    """When each version not named left @production: this pass for the one production leaves now, if
    it was serving (a version that never had an available pod as production is not kept warm)."""
    left: dict[VersionId, datetime] = {}
    for version in by_id.values():
        if version.id in targets:
            continue
        if version.was is Role.PRODUCTION and version.id != wanted.production:
            if version.available > 0:
                left[version.id] = now
        elif version.left_production is not None:
            left[version.id] = version.left_production
    return left


def _warm_set(
    left: Mapping[VersionId, datetime], settings: RollbackSettings, now: datetime
) -> set[VersionId]:
    """The versions kept warm (or to be, once unrouted): inside their window, the `maxWarm` that left
    production last."""
    window = timedelta(seconds=settings.window)
    inside = [version for version, since in left.items() if now < since + window]
    inside.sort(key=lambda version: (left[version], version), reverse=True)
    return set(inside[: settings.max_warm])


def _switch(
    by_id: Mapping[VersionId, RunningVersion], wanted: Wanted, switch: Switch | None, now: datetime
) -> Switch | None:
    """The fast move under way: one starts when @production moves to a version that runs warm,
    leaving or as the canary; it lasts while its target stays @production's."""
    previous = next((v.id for v in by_id.values() if v.was is Role.PRODUCTION), None)
    target = by_id.get(wanted.production)
    if previous is not None and previous != wanted.production:
        if target is not None and target.was in (Role.WARM, Role.LEAVING):
            return Switch(MoveKind.ROLLBACK, previous, target.id, now)
        if target is not None and target.was is Role.CANARY:
            return Switch(MoveKind.PROMOTION, previous, target.id, now)
        return None
    return switch if switch is not None and switch.target == wanted.production else None


def _with_shares(
    plans: list[VersionPlan], by_id: Mapping[VersionId, RunningVersion], wanted: Wanted, sizes: Sizes
) -> tuple[VersionPlan, ...]:
    available = {plan.id: _available(by_id, plan.id) if plan.routed else 0 for plan in plans}
    if sizes.split is Split.PODS:
        shares = apportion(100, available)
    else:
        shares = _weights(plans, available, wanted, sizes)
    return tuple(replace(plan, share=shares.get(plan.id, 0)) for plan in plans)


def _weights(
    plans: Sequence[VersionPlan], available: Mapping[VersionId, int], wanted: Wanted, sizes: Sizes
) -> dict[VersionId, int]:
    """Backend weights: the canary's share asked, scaled by its available pods (as today); the rest to
    production, scaled by its available pods, and what production cannot carry yet to the leaving
    versions by their available pods. A backend without an available pod weighs nothing; weights are
    relative, so with no production-side pod available the canary takes every request."""
    by_role = {plan.role: plan for plan in plans if plan.role in (Role.PRODUCTION, Role.CANARY)}
    canary = by_role.get(Role.CANARY)
    weight = 0
    if canary is not None and canary.replicas > 0:
        weight = wanted.canary_weight * min(available[canary.id], sizes.canary) // sizes.canary
    leaving = {plan.id: available[plan.id] for plan in plans if plan.role is Role.LEAVING}
    production = by_role[Role.PRODUCTION].id
    if available[production] + sum(leaving.values()) == 0:
        return {canary.id: 100} if canary is not None and weight > 0 else {}
    rest = 100 - weight
    carried = min(available[production], sizes.production) / sizes.production if sizes.production else 1
    own = rest if not sum(leaving.values()) else int(rest * carried)
    shares = {production: own, **apportion(rest - own, leaving)}
    if canary is not None:
        shares[canary.id] = weight
    return shares


def apportion(total: int, weights: Mapping[VersionId, int]) -> dict[VersionId, int]:
    """`total` split in proportion to `weights` (largest remainders, ties to the first version), so
    the parts add up to it exactly; all zero when the weights are."""
    whole = sum(weights.values())
    if whole <= 0:
        return dict.fromkeys(weights, 0)
    exact = {version: total * weight / whole for version, weight in weights.items()}
    parts = {version: int(value) for version, value in exact.items()}
    by_remainder = sorted(weights, key=lambda version: (-(exact[version] - parts[version]), version))
    for version in by_remainder[: total - sum(parts.values())]:
        parts[version] += 1
    return parts


def _available(by_id: Mapping[VersionId, RunningVersion], version: VersionId | None) -> int:
    found = by_id.get(version) if version is not None else None
    return found.available if found is not None else 0


def _epoch(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0
