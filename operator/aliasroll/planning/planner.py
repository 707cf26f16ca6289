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
from typing import Any

from aliasroll import conditions, reasons
from aliasroll.conditions import FALSE, TRUE, UNKNOWN, Condition
from aliasroll.errors import AliasrollError
from aliasroll.labels import LABEL_OWNER
from aliasroll.planning import canary as canary_run
from aliasroll.planning import capacity, health, history, records, workloads
from aliasroll.planning.canary import AnalysisResult, CanaryRun
from aliasroll.planning.decide import TrackDecision, decide_canary, decide_production
from aliasroll.planning.records import RegistryWrite
from aliasroll.planning.routers import Routing, TrafficInput, router_for, share
from aliasroll.planning.state import ChildRef, EventRecord, ObservedState, RegistryView, ServedVersion
from aliasroll.planning.workloads import Manifest, WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, Track

HISTORY_LIMIT = history.HISTORY_LIMIT


@dataclass(frozen=True)
class Plan:
    objects: tuple[Manifest, ...]
    prune: tuple[ChildRef, ...]
    status: dict[str, Any]
    events: tuple[EventRecord, ...]
    # Registry writes (alias moves of a canary policy, tags), made before status is written.
    writes: tuple[RegistryWrite, ...] = ()
    next_in: float | None = None  # seconds until a canary step ends or a measurement is due


@dataclass(frozen=True)
class _Workloads:
    """The tracks this pass runs: their versions, replicas now, the router's final split and routing."""

    served: dict[Track, ServedVersion]
    replicas: dict[Track, int]
    targets: Mapping[Track, int]
    routing: Routing


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
) -> Plan:
    now = now.replace(microsecond=0)  # status keeps seconds; the canary's clocks compare with it
    current = {track: _current(track, spec.model.name, observed, previous_status) for track in Track}
    production = decide_production(spec=spec, view=view, current=current[Track.PRODUCTION])
    canary = decide_canary(spec=spec, view=view, current=current[Track.CANARY], production=production.target)
    if spec.suspend:
        production, canary = (
            _held(production, current[Track.PRODUCTION]),
            _held(canary, current[Track.CANARY] if spec.canary_wanted else None),
        )
    events: list[EventRecord] = []
    run, registry = _canary_run(
        spec, view, observed, previous_status, production, canary, analysis, now, events
    )
    if run is not None and run.ended:
        # An aborted version never comes back until @canary names another; a promoted one is production.
        canary = TrackDecision(target=None, problem=canary.problem, pointed_at=canary.pointed_at)

    objects: list[Manifest] = []
    prune: tuple[ChildRef, ...] = ()
    placed: _Workloads | None = None
    requested = canary_run.weight(spec, run) if run is not None else _fixed_weight(spec, canary)
    shown = ""  # the canary's share in place, and the one asked where they differ, for messages
    if production.target is not None:
        placed = _place(
            owner=owner,
            spec=spec,
            observed=observed,
            production=production.target,
            canary=canary.target,
            weight=canary_run.weight(spec, run) if run is not None else None,
        )
        shown = share(placed.routing.canary_weight, requested, placed.routing.why)
        settled = canary_run.settle(spec, run, in_place=_in_place(placed, observed), share=shown, now=now)
        run = settled.run
        events += settled.events
        for track, replicas in placed.replicas.items():
            objects.append(
                workloads.deployment(
                    owner=owner,
                    spec=spec,
                    track=track,
                    version=placed.served[track],
                    replicas=replicas,
                    defaults=defaults,
                )
            )
        # A budget per running track, so a node drain never takes a track's last pods at once.
        objects += [
            workloads.pod_disruption_budget(owner=owner, track=track, replicas=replicas)
            for track, replicas in placed.replicas.items()
            if replicas > 0
        ]
        objects.extend(placed.routing.objects)
        wanted = {(item["kind"], item["metadata"]["name"]) for item in objects}
        prune = tuple(child for child in observed.children if (child.kind, child.name) not in wanted)
    # With nothing to serve yet (first deploy and no usable answer), nothing is created or pruned.

    status, status_events, dropped = _status(
        owner=owner,
        spec=spec,
        view=view,
        observed=observed,
        previous=previous_status,
        production=production,
        canary=canary,
        placed=placed,
        run=run,
        requested=requested,
        shown=shown,
        now=timestamp(now),
    )
    # Alias changes only on a registry that answered this pass (they decide on what it said); the
    # records (tags) whatever it did: the tag writer retries them until they are written, so an
    # outcome decided during an outage is not lost if its run leaves status before MLflow is back.
    writes: list[RegistryWrite] = list(
        records.canary_writes(owner=owner, spec=spec, run=run, registry=registry)
    )
    spans = [*(status.get("history") or ()), *dropped]
    writes += records.served_tags(owner=owner, spec=spec, history=spans)
    return Plan(
        objects=tuple(objects),
        prune=prune,
        status=status,
        events=tuple(status_events + events),
        writes=tuple(writes),
        next_in=canary_run.next_pass_in(spec, run, now),
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
    status = {
        **previous_status,
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
    advanced = canary_run.advance(spec=spec, previous=previous, registry=registry, analysis=analysis, now=now)
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


def _status(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    view: RegistryView,
    observed: ObservedState,
    previous: Mapping[str, Any],
    production: TrackDecision,
    canary: TrackDecision,
    placed: _Workloads | None,
    run: CanaryRun | None,
    requested: int,
    shown: str,
    now: str,
) -> tuple[dict[str, Any], list[EventRecord], list[dict[str, Any]]]:
    """The new status, the events of its changes, and the spans it dropped from the history."""
    served: Mapping[Track, ServedVersion] = placed.served if placed else {}
    changes = history.track_changes(
        spec=spec,
        previous=previous,
        served=served,
        canary=canary,
        share=shown,
        ended=run if run is not None and run.ended else None,
        now=now,
    )
    events = list(changes.events)

    status: dict[str, Any] = {"observedGeneration": owner.generation}
    if placed is not None:
        for track, version in placed.served.items():
            workload = observed.workloads.get(track)
            alias = (
                spec.model.alias
                if track is Track.PRODUCTION
                else (spec.canary.alias if spec.canary else "canary")
            )
            entry = {
                "alias": alias,
                "version": version.version,
                "modelUri": version.uri,
                "runId": version.run_id,
                "since": changes.since.get(track, now),
                "replicas": placed.replicas.get(track, 0),
                "availableReplicas": workload.available if workload else 0,
            }
            status[track.value] = {key: value for key, value in entry.items() if value is not None}
        if not (spec.canary and spec.canary.steps):  # steps are told by their own events
            events += _weight_event(previous, canary, requested, shown)
        status["traffic"] = {
            "router": spec.traffic.router.value,
            "requestedCanaryWeight": requested,
            "canaryWeight": placed.routing.canary_weight,
            "message": placed.routing.message,
        }
    if run is not None and spec.canary is not None:
        # status.canary is the canary track as it runs: gone with its pods, so `kubectl get`
        # names no canary once none runs. (A canary of another version that still drains has no
        # run of its own: left as it is.)
        serving_canary = status.get(Track.CANARY.value)
        if serving_canary is not None and serving_canary.get("version") == run.version:
            # An ended run's pods drain: they say how it ended; its record is status.lastCanary.
            serving_canary.update(
                {"phase": run.phase.value} if run.ended else canary_run.to_status(run, spec.canary)
            )
            serving_canary["weight"] = status["traffic"]["canaryWeight"]
        if run.ended:
            # How the run ended: it stops the same version being tried again, and outlives its pods.
            status[canary_run.LAST_CANARY] = canary_run.to_record(run, spec.canary)
    # The scale subresource (kubectl scale, HorizontalPodAutoscaler): pods of both tracks. Status is
    # written only once the plan is applied, and then the Deployments ask for what the plan placed:
    # the first pass says so at once, instead of a second status write when its Deployment is seen.
    status["replicas"] = (
        sum(placed.replicas.values())
        if placed is not None
        else sum(workload.replicas for workload in observed.workloads.values())
    )
    status["selector"] = f"{LABEL_OWNER}={owner.name}"
    if view.error is None:
        status["registry"] = {"trackingUri": spec.registry.tracking_uri}
        aliases = {
            target.alias: target.version
            for target in (view.production, view.canary)
            if target is not None and target.version is not None
        }
        if aliases:  # an empty map would be sent as null, which the status schema refuses
            status["registry"]["aliases"] = aliases
    elif previous.get("registry"):
        status["registry"] = dict(previous["registry"])  # last answer stands until a new one comes
    if changes.history:
        status["history"] = changes.history

    registry = health.registry_condition(spec, view)
    resolved = health.aliases_condition(spec, view, production, canary)
    previous_conditions = list(previous.get("conditions") or ())
    if placed is None:
        ready, progressing = health.nothing_to_serve(production)
    else:
        ready, progressing = health.rollout_conditions(
            spec=spec,
            observed=observed,
            rollout=health.Rollout(served=placed.served, targets=placed.targets, canary_share=shown),
            registry_ok=registry.status == conditions.TRUE,
            not_followed=_not_followed(spec, production, placed.served[Track.PRODUCTION]),
            previous=previous_conditions,  # a stall stays put through a pass that shows no sign of it
        )
    wanted = [ready, progressing, registry, resolved]
    if (analysed := health.canary_condition(spec, run)) is not None:
        wanted.append(analysed)
    if (credentials := workloads.pod_credentials_condition(spec)) is not None:
        wanted.append(credentials)
    events += health.condition_events(previous_conditions, wanted)
    status["conditions"] = conditions.merge(
        previous_conditions, wanted, now=now, observed_generation=owner.generation
    )
    return status, events, changes.dropped


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


def with_alias_write(status: Mapping[str, Any], run: str, state: canary_run.AliasWrite) -> dict[str, Any]:
    """The status with the alias change of the canary run of version `run` in `state` (the reconciler
    writes it around the change: Attempted before, Made or Planned again after)."""
    updated = dict(status)
    for key in (Track.CANARY.value, canary_run.LAST_CANARY):
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
    rollout up: controller.records). Kept as it was in a pass that had nothing to write."""
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
