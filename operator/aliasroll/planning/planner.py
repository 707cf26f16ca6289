"""The planner: every decision of a reconcile pass, as pure functions.

    plan(owner, spec, registry view, observed children, previous status, now) -> Plan
    refused(owner, previous status, error, now) -> Plan   (a pass that may change nothing)

A Plan holds the desired objects (applied with server-side apply), the owned objects to prune, the
new status and the events to post. Calling it twice with the same inputs gives the same plan, so
every trigger (create, update, timer, registry change, drift) can run the same pass. Each decision
is a small function of its own module: which version each track follows (decide), how many pods
each track may run now (capacity), how requests are routed (routers), what the audit trail says
(history) and which conditions hold (health).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from aliasroll import conditions, reasons
from aliasroll.conditions import FALSE, TRUE, UNKNOWN, Condition
from aliasroll.errors import AliasrollError
from aliasroll.labels import LABEL_OWNER
from aliasroll.planning import bake as bake_run
from aliasroll.planning import canary as canary_run
from aliasroll.planning import capacity, fleet_status, health, history, registry_writes, versions, workloads
from aliasroll.planning import gate as holdout
from aliasroll.planning.canary import AnalysisResult, CanaryRun
from aliasroll.planning.fleet import FastMove
from aliasroll.planning.registry_writes import RegistryWrite
from aliasroll.planning.routers import Routing, TrafficInput, router_for, share
from aliasroll.planning.routers.gateway_api import GatewayAPIRouter
from aliasroll.planning.state import ChildRef, EventRecord, ObservedState, RegistryView, ServedVersion
from aliasroll.planning.status import (
    CanaryTrackStatus,
    HistorySpan,
    ModelDeploymentStatus,
    RegistryStatus,
)
from aliasroll.planning.version_decision import TrackDecision, decide_canary, decide_production
from aliasroll.planning.workloads import Manifest, WorkloadDefaults
from aliasroll.spec import CanarySpec, ModelDeploymentSpec, ResourceRef, Track

HISTORY_LIMIT = history.HISTORY_LIMIT


@dataclass(frozen=True)
class Plan:
    objects: tuple[Manifest, ...]
    prune: tuple[ChildRef, ...]
    status: ModelDeploymentStatus
    events: tuple[EventRecord, ...]
    # Registry writes (alias moves of a canary policy, tags), made before status is written.
    writes: tuple[RegistryWrite, ...] = ()
    next_in: float | None = None  # seconds until a canary step ends, a measurement or a warm version's end
    # Version mode (spec.rollback): the readiness gates to set on pods, after the objects are applied.
    gates: tuple[versions.GateWrite, ...] = ()
    # Version mode: a fast move (rollback or promotion to warm pods) that ended this pass, as its
    # FastRollback event says it; the operator's metric aliasroll_fast_switch_seconds counts it.
    fast_move: FastMove | None = None


@dataclass(frozen=True)
class _Workloads:
    """The tracks this pass runs: their versions, replicas now, the router's final split and routing."""

    served: dict[Track, ServedVersion]
    replicas: dict[Track, int]
    targets: Mapping[Track, int]
    routing: Routing
    versions: versions.Placed | None = None  # version mode: every version's plan
    view: ObservedState | None = None  # version mode: the tracks as placed, for status and conditions


class _Placement(NamedTuple):
    """The tracks placed by this pass (None with nothing to serve yet), the canary run once its
    share is settled, the share in place as messages say it, and the objects that follow."""

    run: CanaryRun | None
    placed: _Workloads | None = None
    shown: str = ""  # the canary's share in place, and the one asked where they differ
    events: tuple[EventRecord, ...] = ()
    objects: tuple[Manifest, ...] = ()
    prune: tuple[ChildRef, ...] = ()
    gates: tuple[versions.GateWrite, ...] = ()


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    view: RegistryView,
    observed: ObservedState,
    previous_status: Mapping[str, Any],
    now: datetime,
    defaults: WorkloadDefaults,
    analysis: AnalysisResult | None = None,
    bake_analysis: AnalysisResult | None = None,
) -> Plan:
    """The pass as named steps: which version each track follows, where the canary run is, how many
    pods each track runs and how requests are split, the objects that says, the status and events,
    the bake of a new production (version mode), and the registry writes."""
    # Version mode's fast moves are timed to the millisecond (status.fastSwitch.since keeps them): a
    # rollback to a warm version takes about a second, which whole seconds would report as 0 or 1.
    clock = now.replace(microsecond=now.microsecond // 1000 * 1000)
    now = now.replace(microsecond=0)  # status keeps seconds; the canary's clocks compare with it
    # Version mode: the tracks are the versions status gave each alias (planning/versions.py).
    raw, observed = observed, versions.as_tracks(observed, previous_status) if spec.rollback else observed
    production, canary = _follow(spec, view, observed, previous_status)
    events: list[EventRecord] = []
    gates = canary_run.Gates(owner=owner.name, jobs=raw.gate_jobs)
    run, registry = _canary_run(
        spec, view, observed, previous_status, production, canary, analysis, now, events, gates
    )
    gate_job = _gate_job(owner, spec, run, canary.target, defaults)
    if run is not None and (run.ended or run.phase is canary_run.Phase.GATING):
        # An aborted version never comes back until @canary names another; a promoted one is
        # production; one the holdout gate judges has no pods until it clears.
        canary = TrackDecision(target=None, problem=canary.problem, pointed_at=canary.pointed_at)
    requested = canary_run.weight(spec, run) if run is not None else _fixed_weight(spec, canary)
    # With nothing to serve yet (first deploy and no usable answer), nothing is created or pruned.
    placement = _Placement(run=run)
    if production.target is not None:
        where = _Where(owner, spec, observed, raw, previous_status, now, defaults, clock)
        placement = _put_in_place(where, production.target, canary.target, run, requested, gate_job)
    placed, run, shown = placement.placed, placement.run, placement.shown
    events += placement.events
    observed = placed.view if placed is not None and placed.view is not None else observed
    given = (owner, spec, view, observed, previous_status, production, canary, placed, run, requested)
    status, status_events, dropped = _status(_StatusInput(*given, shown=shown, now=timestamp(now)))
    next_in = canary_run.next_pass_in(spec, run, now)
    next_in = _with_versions(status, status_events, spec, placed, next_in, now)
    baked = _with_bake(owner, spec, view, previous_status, status, bake_analysis, now)
    if baked.next_in is not None and (next_in is None or baked.next_in < next_in):
        next_in = baked.next_in
    return Plan(
        objects=tuple(placement.objects),
        prune=placement.prune,
        status=status,
        events=tuple(status_events + events + list(baked.events)),
        writes=(*_writes(owner, spec, run, registry, [*status.get("history", ()), *dropped]), *baked.writes),
        next_in=next_in,
        gates=placement.gates,
        fast_move=placed.versions.decision.fast_move if placed and placed.versions else None,
    )


def refused(
    *, owner: ResourceRef, previous_status: Mapping[str, Any], error: AliasrollError, now: datetime
) -> Plan:
    """The plan of a pass that may not change the cluster (an invalid spec, a name taken by someone
    else, an object the API server refused): status keeps saying what runs, and Ready says why
    nothing else happens. Nothing is applied or pruned."""
    previous_conditions = list(previous_status.get("conditions") or ())
    wanted = [
        Condition(reasons.READY, FALSE, error.reason, error.message),
        *(
            Condition(str(c["type"]), str(c["status"]), str(c.get("reason", "")), str(c.get("message", "")))
            for c in previous_conditions
            if c.get("type") != reasons.READY
        ),
    ]
    # Everything else stays as the API server holds it (written by this operator, or an older one).
    status: ModelDeploymentStatus = {
        **cast("ModelDeploymentStatus", previous_status),
        "observedGeneration": owner.generation,
        "conditions": conditions.merge(
            previous_conditions, wanted, now=timestamp(now), observed_generation=owner.generation
        ),
    }
    ready_before = conditions.find(previous_conditions, reasons.READY)
    events: tuple[EventRecord, ...] = ()
    if ready_before is None or ready_before.get("reason") != error.reason:
        events = (EventRecord("Warning", error.reason, error.message),)
    return Plan(objects=(), prune=(), status=status, events=events)


def _current(
    track: Track, model: str, observed: ObservedState, previous_status: Mapping[str, Any]
) -> ServedVersion | None:
    """What a track runs of `model` now: the Deployment's pinned version, else what status last said."""
    for found in (_pinned(observed, track), history.recorded(previous_status, track, model=model)):
        if found is not None and found.model == model:
            return found
    return None


def _pinned(observed: ObservedState, track: Track) -> ServedVersion | None:
    """The version the track's Deployment pins, whatever model it names."""
    workload = observed.workloads.get(track)
    if workload is None or not workload.model or not workload.version:
        return None
    return ServedVersion(model=workload.model, version=workload.version, run_id=workload.run_id)


class _Where(NamedTuple):
    """What placing a pass's versions reads besides the versions: the resource, the cluster (as the
    planner's tracks, and as observed), the previous status, the clock and the defaults."""

    owner: ResourceRef
    spec: ModelDeploymentSpec
    observed: ObservedState
    raw: ObservedState
    previous: Mapping[str, Any]
    now: datetime
    defaults: WorkloadDefaults
    clock: datetime  # now to the millisecond, for version mode's decision (planning/fleet.py)


def _put_in_place(
    where: _Where,
    production: ServedVersion,
    canary: ServedVersion | None,
    run: CanaryRun | None,
    requested: int,
    gate_job: Manifest | None = None,
) -> _Placement:
    """Pods per track and the split (`_place`, or `_place_versions` in version mode), the canary
    step's clock started once its share is in place (`canary.settle`), and the objects to apply and
    prune."""
    owner, spec, observed, now = where.owner, where.spec, where.observed, where.now
    weight = canary_run.weight(spec, run) if run is not None else None
    if spec.rollback is not None:
        placed = _place_versions(where, production, canary, weight)
        assert placed.versions is not None
        in_place = versions.in_place(placed.versions, where.raw, placed.targets)
    else:
        placed = _place(
            owner=owner, spec=spec, observed=observed, production=production, canary=canary, weight=weight
        )
        in_place = _in_place(placed, observed)
    shown = share(placed.routing.canary_weight, requested, placed.routing.why)
    settled = canary_run.settle(spec, run, in_place=in_place, share=shown, now=now)
    objects = _objects(owner, spec, placed, where.defaults)
    if gate_job is not None:
        objects.append(gate_job)
    wanted = {(item["kind"], item["metadata"]["name"]) for item in objects}
    return _Placement(
        run=settled.run,
        placed=placed,
        shown=shown,
        events=tuple(settled.events),
        objects=tuple(objects),
        prune=tuple(child for child in observed.children if (child.kind, child.name) not in wanted),
        gates=versions.gate_writes(where.raw, placed.versions) if placed.versions is not None else (),
    )


def _place_versions(
    where: _Where, production: ServedVersion, canary: ServedVersion | None, weight: int | None
) -> _Workloads:
    """Version mode: the router's split, every version's plan (planning/fleet.py), and the routing
    said as the router says it, over the tracks as placed."""
    spec = where.spec
    router = router_for(spec.traffic.router)
    traffic = TrafficInput(
        owner=where.owner,
        spec=spec,
        production=production,
        canary=canary,
        observed=where.observed,
        weight=weight,
    )
    targets = router.split(traffic)
    placed = versions.place(
        spec=spec,
        raw=where.raw,
        previous_status=where.previous,
        production=production,
        canary=canary,
        targets=targets,
        weight=traffic.requested_weight,
        now=where.clock,
    )
    served = {Track.PRODUCTION: production}
    if canary is not None and Track.CANARY in placed.replicas:
        served[Track.CANARY] = canary
    view = versions.track_view(where.raw, placed)
    routed = TrafficInput(
        owner=where.owner, spec=spec, production=production, canary=canary, observed=view, weight=weight
    )
    if isinstance(router, GatewayAPIRouter):
        backends = versions.backends(where.owner, spec, placed)
        routing = router.route_versions(routed, backends, versions.canary_share(placed))
    else:
        routing = router.route(routed, placed.replicas)
    return _Workloads(
        served=served, replicas=placed.replicas, targets=targets, routing=routing, versions=placed, view=view
    )


def _follow(
    spec: ModelDeploymentSpec, view: RegistryView, observed: ObservedState, previous: Mapping[str, Any]
) -> tuple[TrackDecision, TrackDecision]:
    """Which version each track follows this pass (planning/version_decision.py); a suspended
    resource keeps what each track runs."""
    current = {track: _current(track, spec.model.name, observed, previous) for track in Track}
    production = decide_production(spec=spec, view=view, current=current[Track.PRODUCTION])
    canary = decide_canary(spec=spec, view=view, current=current[Track.CANARY], production=production.target)
    if spec.suspend:
        return (
            _held(production, current[Track.PRODUCTION]),
            _held(canary, current[Track.CANARY] if spec.canary_wanted else None),
        )
    return production, canary


def _objects(
    owner: ResourceRef, spec: ModelDeploymentSpec, placed: _Workloads, defaults: WorkloadDefaults
) -> list[Manifest]:
    """The objects the placed tracks need: a Deployment each, a disruption budget for each running
    one (so a node drain never takes a track's last pods at once), and the router's objects; in
    version mode, a Deployment per version (planning/versions.py)."""
    if placed.versions is not None:
        return [*versions.objects(owner, spec, placed.versions, defaults), *placed.routing.objects]
    objects = [
        workloads.deployment(
            owner=owner,
            spec=spec,
            track=track,
            version=placed.served[track],
            replicas=replicas,
            defaults=defaults,
        )
        for track, replicas in placed.replicas.items()
    ]
    objects += [
        workloads.pod_disruption_budget(owner=owner, track=track, replicas=replicas)
        for track, replicas in placed.replicas.items()
        if replicas > 0
    ]
    return [*objects, *placed.routing.objects]


def _gate_job(
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    run: CanaryRun | None,
    candidate: ServedVersion | None,
    defaults: WorkloadDefaults,
) -> Manifest | None:
    """The holdout gate's Job while a run is judged by it (planning/gate.py); after, it goes."""
    gate = spec.canary.gate if spec.canary is not None else None
    if gate is None or run is None or run.phase is not canary_run.Phase.GATING or run.gate is None:
        return None
    if candidate is None or candidate.version != run.version:
        return None  # the version's details (its model, its run) are not known this pass
    return holdout.job(
        owner=owner, spec=spec, gate=gate, candidate=candidate, baseline=run.gate.baseline, defaults=defaults
    )


def _writes(
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    run: CanaryRun | None,
    registry: canary_run.Registry | None,
    spans: list[Any],
) -> tuple[RegistryWrite, ...]:
    """The registry writes: alias changes only on a registry that answered this pass (they decide on
    what it said); the records (tags) whatever it did: the tag writer retries them until they are
    written, so an outcome decided during an outage is not lost if its run leaves status before
    MLflow is back. `spans` are the history kept and the spans it dropped."""
    return (
        *registry_writes.canary_writes(owner=owner, spec=spec, run=run, registry=registry),
        *registry_writes.served_tags(owner=owner, spec=spec, history=spans),
    )


def _canary_run(
    spec: ModelDeploymentSpec,
    view: RegistryView,
    observed: ObservedState,
    previous_status: Mapping[str, Any],
    production: TrackDecision,
    canary: TrackDecision,
    analysis: AnalysisResult | None,
    now: datetime,
    events: list[EventRecord],
    gates: canary_run.Gates,
) -> tuple[CanaryRun | None, canary_run.Registry | None]:
    """The canary run after this pass's registry answer and measurement, and the registry it decided
    on (None when the registry did not answer: no registry write is planned then). Without an
    answer the run still goes on from the aliases last known (a measurement counts, a step passes, a
    failed analysis aborts), but no run starts or ends on an alias move."""
    previous = canary_run.recorded_run(previous_status)
    production_now = observed.workloads.get(Track.PRODUCTION)
    settled_version = (
        production_now.version
        if production_now is not None
        and production.target is not None
        and health.settled(
            production_now.model, production_now.version, production_now.rolled_out, production.target
        )
        else None
    )
    if view.error is not None:
        known = (previous_status.get("registry") or {}).get("aliases") or {}
        registry = canary_run.Registry(
            canary_alias=previous.version if previous is not None else None,
            production_alias=known.get(spec.model.alias),
            production_settled=settled_version,
            fresh=False,
        )
    else:
        registry = canary_run.Registry(
            canary_alias=canary.target.version if canary.target is not None else None,
            production_alias=view.production.version if view.production is not None else None,
            production_settled=settled_version,
        )
    advanced = canary_run.advance(
        spec=spec, previous=previous, registry=registry, analysis=analysis, now=now, gates=gates
    )
    events += advanced.events
    return advanced.run, registry if registry.fresh else None


def _in_place(placed: _Workloads, observed: ObservedState) -> bool:
    """The split is where the router wants it: every track at its replicas, all available."""
    if Track.CANARY not in placed.targets or placed.routing.canary_weight <= 0:
        return False
    return all(
        placed.replicas.get(track) == target
        and (workload := observed.workloads.get(track)) is not None
        and workload.replicas == target
        and workload.available == target  # more: a leaving pod still takes requests
        and workload.rolled_out
        for track, target in placed.targets.items()
    )


def _held(decision: TrackDecision, current: ServedVersion | None) -> TrackDecision:
    """Suspended: the track keeps what it runs; what the alias says is kept for the conditions."""
    return TrackDecision(target=current, problem=decision.problem, pointed_at=decision.pointed_at)


def _place(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    observed: ObservedState,
    production: ServedVersion,
    canary: ServedVersion | None,
    weight: int | None,
) -> _Workloads:
    router = router_for(spec.traffic.router)
    traffic = TrafficInput(
        owner=owner, spec=spec, production=production, canary=canary, observed=observed, weight=weight
    )
    targets = router.split(traffic)
    running = {
        track: capacity.Running(replicas=workload.replicas, available=workload.available)
        for track, workload in observed.workloads.items()
    }
    # A canary that ends keeps serving what its Deployment pins (even a model the spec no longer
    # names) while it drains; one whose version cannot be read is only pruned.
    running_canary = _pinned(observed, Track.CANARY)
    if running_canary is None:
        running.pop(Track.CANARY, None)
    # It also stays whole until production runs its version on every replica (a promotion must not
    # lose the capacity the canary gives while production pods are replaced).
    production_now = observed.workloads.get(Track.PRODUCTION)
    production_settled = (
        production_now is not None
        and health.settled(
            production_now.model, production_now.version, production_now.rolled_out, production
        )
        and production_now.replicas == targets[Track.PRODUCTION]
    )
    # (Nothing is kept for capacity at spec.replicas 0: zero asked for is zero pods in every track.)
    keep = canary is None and not production_settled and spec.replicas > 0
    hold = frozenset({Track.CANARY}) if keep else frozenset()
    wanted = {Track.PRODUCTION: production, Track.CANARY: canary}
    rolling = frozenset(
        track
        for track, workload in observed.workloads.items()
        if (version := wanted.get(track)) is not None
        and workload.stalled is None  # a stuck rollout must not also keep the replicas asked for
        and not health.settled(workload.model, workload.version, workload.rolled_out, version)
    )
    replicas = capacity.replicas_now(targets=targets, running=running, hold=hold, rolling=rolling)
    served = {Track.PRODUCTION: production}
    if Track.CANARY in replicas:
        draining = canary or running_canary
        assert draining is not None, "capacity keeps a canary only when one runs or is wanted"
        served[Track.CANARY] = draining
    return _Workloads(
        served=served, replicas=replicas, targets=targets, routing=router.route(traffic, replicas)
    )


class _StatusInput(NamedTuple):
    """What the status of a pass is made from."""

    owner: ResourceRef
    spec: ModelDeploymentSpec
    view: RegistryView
    observed: ObservedState
    previous: Mapping[str, Any]
    production: TrackDecision
    canary: TrackDecision
    placed: _Workloads | None
    run: CanaryRun | None
    requested: int
    shown: str
    now: str


def _status(given: _StatusInput) -> tuple[ModelDeploymentStatus, list[EventRecord], list[HistorySpan]]:
    """The new status, the events of its changes, and the spans it dropped from the history."""
    spec, placed, run = given.spec, given.placed, given.run
    changes = history.track_changes(
        spec=spec,
        previous=given.previous,
        served=placed.served if placed else {},
        canary=given.canary,
        share=given.shown,
        ended=run if run is not None and run.ended else None,
        now=given.now,
    )
    events = list(changes.events)
    status: ModelDeploymentStatus = {"observedGeneration": given.owner.generation}
    if placed is not None:
        status |= _tracks(given, placed, changes.since)
        if not (spec.canary and spec.canary.steps):  # steps are told by their own events
            events += _weight_event(given.previous, given.canary, given.requested, given.shown)
        status["traffic"] = {
            "router": spec.traffic.router.value,
            "requestedCanaryWeight": given.requested,
            "canaryWeight": placed.routing.canary_weight,
            "message": placed.routing.message,
        }
    if run is not None and spec.canary is not None:
        _with_canary_run(status, run, spec.canary)
    # The scale subresource (kubectl scale, HorizontalPodAutoscaler): pods of both tracks. Status is
    # written only once the plan is applied, and then the Deployments ask for what the plan placed:
    # the first pass says so at once, instead of a second status write when its Deployment is seen.
    status["replicas"] = (
        sum(placed.replicas.values())
        if placed is not None
        else sum(workload.replicas for workload in given.observed.workloads.values())
    )
    status["selector"] = f"{LABEL_OWNER}={given.owner.name}"
    if (registry := _registry(spec, given.view, given.previous)) is not None:
        status["registry"] = registry
    if changes.history:
        status["history"] = changes.history
    wanted = _conditions(given)
    previous_conditions = list(given.previous.get("conditions") or ())
    events += health.condition_events(previous_conditions, wanted)
    status["conditions"] = conditions.merge(
        previous_conditions, wanted, now=given.now, observed_generation=given.owner.generation
    )
    return status, events, changes.dropped


def _tracks(given: _StatusInput, placed: _Workloads, since: Mapping[Track, str]) -> ModelDeploymentStatus:
    """status.production and status.canary: the version each track serves, since when, its pods."""
    tracks: ModelDeploymentStatus = {}
    spec = given.spec
    for track, version in placed.served.items():
        workload = given.observed.workloads.get(track)
        entry: CanaryTrackStatus = {
            "alias": spec.model.alias
            if track is Track.PRODUCTION
            else (spec.canary.alias if spec.canary else "canary"),
            "version": version.version,
            "modelUri": version.uri,
            "since": since.get(track, given.now),
            "replicas": placed.replicas.get(track, 0),
            "availableReplicas": workload.available if workload else 0,
        }
        if version.run_id is not None:
            entry["runId"] = version.run_id
        tracks[track.value] = entry
    return tracks


def _with_canary_run(status: ModelDeploymentStatus, run: CanaryRun, canary: CanarySpec) -> None:
    """status.canary is the canary track as it runs: gone with its pods, so `kubectl get` names no
    canary once none runs. (A canary of another version that still drains has no run of its own:
    left as it is.) An ended run's pods drain: they say how it ended; its record, which stops the
    same version being tried again and outlives its pods, is status.lastCanary. A run its holdout
    gate judges has no pods yet: status.canary says so (no replicas, no share)."""
    serving_canary = status.get("canary")
    if run.phase is canary_run.Phase.GATING:
        # The run is the canary now (pods of the one before it may still drain): no pod, no share.
        status["canary"] = {
            "alias": canary.alias,
            "version": run.version,
            "replicas": 0,
            "availableReplicas": 0,
            **canary_run.to_status(run, canary),
            "weight": 0,
        }
        return
    if serving_canary is not None and serving_canary.get("version") == run.version:
        if run.ended:
            serving_canary["phase"] = run.phase.value
        else:
            serving_canary.update(canary_run.to_status(run, canary))
        serving_canary["weight"] = status["traffic"]["canaryWeight"]
    if run.ended:
        status["lastCanary"] = canary_run.to_record(run, canary)


def _registry(
    spec: ModelDeploymentSpec, view: RegistryView, previous: Mapping[str, Any]
) -> RegistryStatus | None:
    """status.registry: the registry's last answer, which stands until a new one comes."""
    if view.error is not None:
        return cast("RegistryStatus", dict(previous["registry"])) if previous.get("registry") else None
    registry: RegistryStatus = {"trackingUri": spec.registry.tracking_uri}
    aliases = {
        target.alias: target.version
        for target in (view.production, view.canary)
        if target is not None and target.version is not None
    }
    if aliases:  # an empty map would be sent as null, which the status schema refuses
        registry["aliases"] = aliases
    return registry


def _conditions(given: _StatusInput) -> list[Condition]:
    """The conditions this pass wants: Ready, Progressing, RegistryReachable, AliasesResolved, and
    CanaryAnalysis and PodCredentials where they apply."""
    spec, placed = given.spec, given.placed
    registry = health.registry_condition(spec, given.view)
    resolved = health.aliases_condition(spec, given.view, given.production, given.canary)
    if placed is None:
        ready, progressing = health.nothing_to_serve(given.production)
    else:
        ready, progressing = health.rollout_conditions(
            spec=spec,
            observed=given.observed,
            rollout=health.Rollout(served=placed.served, targets=placed.targets, canary_share=given.shown),
            registry_ok=registry.status == conditions.TRUE,
            not_followed=_not_followed(spec, given.production, placed.served[Track.PRODUCTION]),
            # A stall stays put through a pass that shows no sign of it.
            previous=list(given.previous.get("conditions") or ()),
        )
    wanted = [ready, progressing, registry, resolved]
    if (analysed := health.canary_condition(spec, given.run)) is not None:
        wanted.append(analysed)
    if (credentials := workloads.pod_credentials_condition(spec)) is not None:
        wanted.append(credentials)
    return wanted


def _with_versions(
    status: ModelDeploymentStatus,
    events: list[EventRecord],
    spec: ModelDeploymentSpec,
    workloads_placed: _Workloads | None,
    next_in: float | None,
    now: datetime,
) -> float | None:
    """Version mode's part of the pass's end: status.warm and status.fastSwitch, the FastRollback
    event of a fast move that ended, and a pass when the first warm version's window ends."""
    if workloads_placed is None or (placed := workloads_placed.versions) is None:
        return next_in
    kept = fleet_status.to_status(placed.decision)
    if "warm" in kept:
        status["warm"] = kept["warm"]
    if "fastSwitch" in kept:
        status["fastSwitch"] = kept["fastSwitch"]
    events += _fast_move_event(placed.decision, spec)
    warm_due = versions.warm_due_in(placed.decision, now)
    if warm_due is not None and (next_in is None or warm_due < next_in):
        return warm_due
    return next_in


class _Baked(NamedTuple):
    """The bake's part of a pass: its events, its registry writes and when it wants the next pass."""

    events: tuple[EventRecord, ...] = ()
    writes: tuple[RegistryWrite, ...] = ()
    next_in: float | None = None


def _with_bake(
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    view: RegistryView,
    previous: Mapping[str, Any],
    status: ModelDeploymentStatus,
    analysis: AnalysisResult | None,
    now: datetime,
) -> _Baked:
    """Version mode with spec.rollback.bake: the bake after this pass (planning/bake.py) in
    status.bake, which keeps an ended bake until the next one starts."""
    if spec.rollback is None or spec.rollback.bake is None:
        return _Baked()
    model = spec.model.name
    fresh = view.error is None
    moment = bake_run.Moment(
        now=now,
        production=(status.get("production") or {}).get("version"),
        production_before=(previous.get("production") or {}).get("version"),
        alias=view.production.version if fresh and view.production is not None else None,
        fresh=fresh,
        warm_before=frozenset(
            str(entry.get("version"))
            for entry in previous.get("warm") or ()
            if entry.get("model", model) == model
        ),
        warm={
            entry["version"]: entry["routed"] for entry in status.get("warm", ()) if entry["model"] == model
        },
    )
    previous_bake = bake_run.from_status(previous.get(bake_run.KEY))
    advanced = bake_run.advance(spec=spec, previous=previous_bake, moment=moment, analysis=analysis)
    if advanced.bake is None:
        return _Baked(events=advanced.events)
    status["bake"] = bake_run.to_status(advanced.bake, spec)
    writes = registry_writes.bake_writes(owner=owner, spec=spec, bake=advanced.bake, moment=moment)
    return _Baked(
        events=advanced.events,
        writes=tuple(writes),
        next_in=bake_run.next_pass_in(spec, advanced.bake, now),
    )


def _fast_move_event(decision: Any, spec: ModelDeploymentSpec) -> list[EventRecord]:
    """FastRollback: a move of @production to a warm version (or a promotion of the canary's warm
    pods) that ended this pass, and how long it took from the pass that saw the move to the one that
    unrouted the version it replaces. Requests follow as the Service's endpoints do: kube-proxy
    applies the last change about a second after the first (its minimum sync period), which the
    operator does not see, so the message does not claim every request."""
    move = decision.fast_move
    if move is None:
        return []
    how = "moved back to" if move.kind.value == "rollback" else "promoted to"
    message = (
        f"@{spec.model.alias} {how} version {move.target.version}, warm: the only version routed "
        f"{move.seconds:.1f} s after the move was seen, no pod created (requests follow as the Service's "
        f"endpoints do); version {move.source.version} stays warm if spec.rollback.window allows"
    )
    return [EventRecord("Normal", reasons.FAST_ROLLBACK, message)]


def _fixed_weight(spec: ModelDeploymentSpec, canary: TrackDecision) -> int:
    return spec.canary.weight if spec.canary and canary.target else 0


def _weight_event(
    previous: Mapping[str, Any], canary: TrackDecision, requested: int, shown: str
) -> list[EventRecord]:
    before = (previous.get("traffic") or {}).get("requestedCanaryWeight")
    canary_before = (previous.get(Track.CANARY.value) or {}).get("version")
    if canary.target is None or canary_before != canary.target.version or before in (None, requested):
        return []
    message = f"canary weight changed from {before}% to {requested}%; in place now: {shown}"
    return [EventRecord("Normal", reasons.TRAFFIC_SHIFTED, message)]


def _not_followed(spec: ModelDeploymentSpec, production: TrackDecision, serving: ServedVersion) -> str | None:
    if not spec.suspend:
        return None
    pointed = production.pointed_at
    moved = f" (@{spec.model.alias} points at {pointed})" if pointed and pointed != serving.version else ""
    return f"spec.suspend is true: alias moves are not followed{moved}"


def with_alias_write(
    status: Mapping[str, Any], run: str, state: canary_run.AliasWrite, *, record: str = ""
) -> dict[str, Any]:
    """The status with the alias change of the canary run of version `run` in `state` (the reconciler
    writes it around the change: Attempted before, Made or Planned again after); with `record`
    "bake", the change of the bake of version `run` (status.bake)."""
    updated = dict(status)
    keys = (bake_run.KEY,) if record == bake_run.KEY else (Track.CANARY.value, canary_run.LAST_CANARY)
    for key in keys:
        entry = updated.get(key)
        if isinstance(entry, Mapping) and entry.get("version") == run and entry.get("aliasWrite"):
            updated[key] = {**entry, "aliasWrite": state.value}
    return updated


def with_records(
    status: Mapping[str, Any],
    previous_status: Mapping[str, Any],
    *,
    problems: list[str],
    wrote: bool,
    owner: ResourceRef,
    now: datetime,
    pending: bool = False,
) -> dict[str, Any]:
    """The plan's status with the Recorded condition: whether the registry took this pass's writes
    (tags, a canary policy's alias moves), or its tags are still being written (they never hold a
    rollout up: controller.tag_writer). Kept as it was in a pass that had nothing to write."""
    before = conditions.find(previous_status.get("conditions") or (), reasons.RECORDED)
    if problems:
        wanted = Condition(
            reasons.RECORDED,
            FALSE,
            reasons.REGISTRY_WRITE_FAILED,
            "the registry refused the operator's records (serving is not affected; alias moves are "
            "retried every pass, version tags by the operator with backoff): "
            + "; ".join(dict.fromkeys(problems)),
        )
    elif pending:
        wanted = Condition(
            reasons.RECORDED,
            UNKNOWN,
            reasons.RECORDS_PENDING,
            "the registry's records of where and when each version served (model version tags) are "
            "being written, after the rollout",
        )
    elif wrote:
        wanted = Condition(
            reasons.RECORDED,
            TRUE,
            reasons.RECORDS_WRITTEN,
            "the registry holds where and when each version served (model version tags)",
        )
    elif before is not None:
        wanted = Condition(
            reasons.RECORDED,
            str(before["status"]),
            str(before.get("reason", "")),
            str(before.get("message", "")),
        )
    else:
        return dict(status)
    others = [c for c in status.get("conditions") or () if c.get("type") != reasons.RECORDED]
    merged = conditions.merge(
        [before] if before else [], [wanted], now=timestamp(now), observed_generation=owner.generation
    )
    return {**status, "conditions": [*others, *merged]}
