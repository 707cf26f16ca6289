"""Version mode (spec.rollback): a Deployment per version, routed by the pods' readiness gate.

The planner's track model runs one Deployment per track and rolls it from version to version; a
version that leaves a track is gone, so a rollback or a promotion starts pods cold. With
spec.rollback a resource runs instead one Deployment per version (`<name>-v<version>`), every pod
gated by `aliasroll.io/routed`, and planning/fleet.py decides per version its role, its pods and its
gate: a version that leaves @production stays warm (running, not routed) for spec.rollback.window,
and moving @production back to it only sets its gate (docs/design/rollback-window.md).

This module joins that decision to the planner's:

- `as_tracks`: the track view the rest of the planner reads (which version each alias was given, its
  pods), made of the per-version Deployments and what status remembers;
- `place`: the versions' replicas and gates from fleet.decide, as the planner's replicas per track;
- `objects` and `gate_writes`: the Deployments, budgets and gate patches that say it.

Track Deployments left from before spec.rollback was set are versions leaving: they keep serving
until the named versions' pods carry every replica, then go (never warm: their pods have no gate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aliasroll.planning import fleet, workloads
from aliasroll.planning.fleet import Decision, Role, RollbackSettings, RunningVersion, VersionId
from aliasroll.planning.fleet_status import Memory, remembered
from aliasroll.planning.observed import ObservedTrack, serving
from aliasroll.planning.routers.gateway_api import Backend
from aliasroll.planning.state import ObservedState, ObservedVersion, ObservedWorkload, ServedVersion
from aliasroll.planning.version_workloads import budget, deployment, deployment_name, selector
from aliasroll.planning.workloads import Manifest, WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, RouterKind, Track


@dataclass(frozen=True)
class GateWrite:
    """Set the readiness gate of one pod: True routes it (Ready once its probe passes), False not."""

    pod: str
    routed: bool


@dataclass(frozen=True)
class Placed:
    """The versions this pass runs: the decision, the Deployment each plan is written as, and the
    replicas per track the planner's status and conditions speak of."""

    decision: Decision
    replicas: dict[Track, int]
    served: dict[VersionId, ServedVersion]  # every version kept, to write its Deployment
    legacy: dict[VersionId, tuple[Track, ObservedWorkload]]  # track Deployments still serving


def settings(spec: ModelDeploymentSpec) -> RollbackSettings:
    rollback = spec.rollback
    if rollback is None:
        return RollbackSettings()
    return RollbackSettings(window=rollback.window_seconds, max_warm=rollback.max_warm, floor=rollback.floor)


def version_id(version: ServedVersion) -> VersionId:
    return VersionId(version.model, version.version)


def _legacy_id(track: Track, workload: ObservedWorkload) -> VersionId:
    # Never a version an alias names: it only drains.
    return VersionId(workload.model or "", f"{workload.version or ''}@{track.value}-track")


def running(
    observed: ObservedState, memory: Memory
) -> tuple[list[RunningVersion], dict[VersionId, tuple[Track, ObservedWorkload]]]:
    """The versions the cluster runs, as fleet.decide reads them, with what status remembers; and
    the track Deployments among them (by the id they are given)."""
    found: list[RunningVersion] = []
    for version in observed.versions:
        vid = VersionId(version.model, version.version)
        gates = [pod.routed for pod in version.pods if pod.routed is not None]
        routed = any(gates) if gates else vid in (memory.production, memory.canary)
        found.append(
            RunningVersion(
                id=vid,
                replicas=version.replicas,
                available=version.available,
                ready=version.probe_ready,
                routed=routed,
            )
        )
    legacy: dict[VersionId, tuple[Track, ObservedWorkload]] = {}
    for track, workload in observed.workloads.items():
        if workload.model and workload.version:
            vid = _legacy_id(track, workload)
            legacy[vid] = (track, workload)
            # What its Service reaches, whatever version each pod runs (it may be mid-roll).
            reached = serving(workload)
            found.append(RunningVersion(vid, workload.replicas, reached, reached, routed=True))
    return memory.join(found), legacy


def as_tracks(observed: ObservedState, previous_status: Mapping[str, Any]) -> ObservedState:
    """The track view of a version-mode resource: each track is the Deployment of the version status
    says the alias was given last (or, before the first per-version Deployment exists, the track
    Deployment it replaces). A track counts as rolled out only once no other version it replaces
    still takes requests."""
    memory = remembered(previous_status)
    by_id = _by_id(observed)
    tracks: dict[Track, ObservedWorkload] = {}
    for track, wanted in ((Track.PRODUCTION, memory.production), (Track.CANARY, memory.canary)):
        version = by_id.get(wanted) if wanted is not None else None
        if version is None:
            if (legacy := observed.workloads.get(track)) is not None:
                tracks[track] = legacy
            continue
        tracks[track] = _as_track(version, track, _others_serving(observed, memory, exclude=version))
    return ObservedState(workloads=tracks, children=observed.children, versions=observed.versions)


def _as_track(version: ObservedVersion, track: Track, others: int) -> ObservedTrack:
    """A version's Deployment as the track it serves; `others`: Ready pods of versions leaving, which
    take production's requests until its own pods are up (it is rolled out only once none does)."""
    return ObservedTrack(
        name=version.name,
        track=track,
        model=version.model,
        version=version.version,
        replicas=version.replicas,
        available=version.available,
        rolled_out=version.rolled_out and version.available >= version.replicas and not others,
        stalled=version.stalled,
        run_id=version.run_id,
        pod_failure=version.pod_failure,
        serving=version.available + (others if track is Track.PRODUCTION else 0),
    )


def _by_id(observed: ObservedState) -> dict[VersionId, ObservedVersion]:
    return {VersionId(v.model, v.version): v for v in observed.versions}


def _others_serving(observed: ObservedState, memory: Memory, *, exclude: ObservedVersion) -> int:
    """Ready pods of versions no alias names (leaving ones, and track Deployments left over)."""
    named = {memory.production, memory.canary}
    count = sum(
        version.available
        for version in observed.versions
        if version is not exclude and VersionId(version.model, version.version) not in named
    )
    return count + sum(workload.available for workload in observed.workloads.values())


def place(
    *,
    spec: ModelDeploymentSpec,
    raw: ObservedState,
    previous_status: Mapping[str, Any],
    production: ServedVersion,
    canary: ServedVersion | None,
    targets: Mapping[Track, int],
    weight: int,
    now: datetime,
) -> Placed:
    """fleet.decide over the versions `raw` (the cluster as observed) runs, for the aliases' versions
    and the router's split (`targets`)."""
    memory = remembered(previous_status)
    versions, legacy = running(raw, memory)
    wanted = fleet.Wanted(
        production=version_id(production),
        canary=version_id(canary) if canary is not None else None,
        canary_weight=weight,
    )
    sizes = fleet.Sizes(
        replicas=spec.replicas,
        production=targets.get(Track.PRODUCTION, 0),
        canary=targets.get(Track.CANARY, 0),
        # gatewayAPI: the route weights a backend per version; replicas: one Service over their pods.
        split=fleet.Split.WEIGHTS if spec.traffic.router is RouterKind.GATEWAY_API else fleet.Split.PODS,
    )
    decision = fleet.decide(
        running=versions, wanted=wanted, sizes=sizes, settings=settings(spec), switch=memory.switch, now=now
    )
    served: dict[VersionId, ServedVersion] = {version_id(production): production}
    if canary is not None:
        served[version_id(canary)] = canary
    for version in raw.versions:
        served.setdefault(
            VersionId(version.model, version.version),
            ServedVersion(model=version.model, version=version.version, run_id=version.run_id),
        )
    replicas = {Track.PRODUCTION: 0}
    for plan in decision.versions:
        if plan.role is Role.PRODUCTION:
            replicas[Track.PRODUCTION] = plan.replicas
        elif plan.role is Role.CANARY:
            replicas[Track.CANARY] = plan.replicas
    return Placed(decision=decision, replicas=replicas, served=served, legacy=legacy)


def objects(
    owner: ResourceRef, spec: ModelDeploymentSpec, placed: Placed, defaults: WorkloadDefaults
) -> list[Manifest]:
    """A Deployment per version kept (a track Deployment still serving keeps its own, at the pods it
    keeps), and a disruption budget per routed version."""
    result: list[Manifest] = []
    for plan in placed.decision.versions:
        if plan.id in placed.legacy:
            track, workload = placed.legacy[plan.id]
            version = ServedVersion(workload.model or "", workload.version or "", workload.run_id)
            result.append(
                workloads.deployment(
                    owner=owner,
                    spec=spec,
                    track=track,
                    version=version,
                    replicas=plan.replicas,
                    defaults=defaults,
                )
            )
            continue
        name = deployment_name(owner, spec, plan.id)
        result.append(
            deployment(
                owner=owner,
                spec=spec,
                name=name,
                version=placed.served[plan.id],
                replicas=plan.replicas,
                role=plan.role,
                defaults=defaults,
            )
        )
        if plan.routed and plan.replicas > 0:
            result.append(budget(owner, name))
    return result


def backends(owner: ResourceRef, spec: ModelDeploymentSpec, placed: Placed) -> list[Backend]:
    """The gatewayAPI route's backends: a Service per routed version (a track Deployment from before
    keeps its track's Service), weighted by its share of requests."""
    found: list[Backend] = []
    for plan in placed.decision.versions:
        if not plan.routed:
            continue
        if plan.id in placed.legacy:
            track = placed.legacy[plan.id][0]
            name, chosen = workloads.workload_name(owner, track), workloads.track_selector(owner, track)
        else:
            name = deployment_name(owner, spec, plan.id)
            chosen = selector(owner, name)
        found.append(Backend(name=name, selector=chosen, weight=plan.share))
    return found


def canary_share(placed: Placed) -> int:
    return sum(plan.share for plan in placed.decision.with_role(Role.CANARY))


def gate_writes(observed: ObservedState, placed: Placed) -> tuple[GateWrite, ...]:
    """The pods whose gate differs from their version's plan (new pods have none yet)."""
    plans = {plan.id: plan for plan in placed.decision.versions}
    writes: list[GateWrite] = []
    for version in observed.versions:
        plan = plans.get(VersionId(version.model, version.version))
        if plan is None:
            continue  # it goes: its pods are deleted with it
        wanted = _pod_gates(version, plan)
        writes += [
            GateWrite(pod.name, wanted[pod.name])
            for pod in version.pods
            if pod.routed is not wanted[pod.name]
        ]
    return tuple(sorted(writes, key=lambda write: (not write.routed, write.pod)))


def _pod_gates(version: ObservedVersion, plan: fleet.VersionPlan) -> dict[str, bool]:
    """The gate of each pod: its version's, except a leaving version's, which keeps routed only as
    many pods as the named versions do not carry yet (the Ready ones first): its pods leave the
    endpoints one by one as the named versions' pods become Ready, so the last of them leaves with
    the last of those (one kube-proxy sync, where unrouting the whole version at the end waits for
    another), and they keep running."""
    if plan.routed_pods is None or not plan.routed or plan.replicas < len(version.pods):
        # Not while its Deployment removes pods: which ones go is the ReplicaSet's choice, and
        # unrouting others beside them would take more than the named versions carry.
        return {pod.name: plan.routed for pod in version.pods}
    # Ready pods first, then those already routed, by name: the same pods stay routed pass after pass.
    ordered = sorted(version.pods, key=lambda pod: (not pod.ready, pod.routed is not True, pod.name))
    return {pod.name: index < plan.routed_pods for index, pod in enumerate(ordered)}


def warm_due_in(decision: Decision, now: datetime) -> float | None:
    """Seconds until the first warm version's window ends (its pass removes it)."""
    ends = [plan.warm_until for plan in decision.versions if plan.warm_until is not None]
    return max(0.0, (min(ends) - now).total_seconds()) if ends else None


def track_view(raw: ObservedState, placed: Placed) -> ObservedState:
    """The tracks as this pass placed them, for status, conditions and the router: each track is its
    named version's Deployment; production's side also counts the Ready pods of versions leaving
    (they take its requests until its own pods are up), and is rolled out only once none does."""
    by_id = _by_id(raw)
    leaving = sum(
        by_id[plan.id].available if plan.id in by_id else placed.legacy[plan.id][1].available
        for plan in placed.decision.with_role(Role.LEAVING)
        if plan.routed and (plan.id in by_id or plan.id in placed.legacy)
    )
    tracks: dict[Track, ObservedWorkload] = {}
    for role, track in ((Role.PRODUCTION, Track.PRODUCTION), (Role.CANARY, Track.CANARY)):
        for plan in placed.decision.with_role(role):
            version = by_id.get(plan.id)
            if version is None:
                continue
            tracks[track] = _as_track(version, track, leaving)
    return ObservedState(workloads=tracks, children=raw.children, versions=raw.versions)


def in_place(placed: Placed, raw: ObservedState, targets: Mapping[Track, int]) -> bool:
    """The canary's split is where the router wants it: both named versions at their size, all
    their pods available, and no version leaving still takes requests."""
    if Track.CANARY not in targets:
        return False
    by_id = _by_id(raw)
    for role, track in ((Role.PRODUCTION, Track.PRODUCTION), (Role.CANARY, Track.CANARY)):
        plans = placed.decision.with_role(role)
        if not plans or (version := by_id.get(plans[0].id)) is None:
            return False
        if not (plans[0].replicas == version.replicas == version.available == targets[track]):
            return False
    return not any(plan.routed for plan in placed.decision.with_role(Role.LEAVING))
