"""The planner: every decision of a reconcile pass, as one pure function.

    plan(owner, spec, registry view, observed children, previous status, now) -> Plan

A Plan holds the desired objects (applied with server-side apply), the owned objects to prune, the
new status and the events to post. Calling it twice with the same inputs gives the same plan, so
every trigger (create, update, timer, registry change, drift) can run the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aliasroll import conditions, reasons
from aliasroll.conditions import FALSE, TRUE, UNKNOWN, Condition
from aliasroll.planning import workloads
from aliasroll.planning.decide import TrackDecision, decide_canary, decide_production, is_rollback
from aliasroll.planning.state import (
    ChildRef,
    EventRecord,
    ObservedState,
    ObservedWorkload,
    RegistryView,
    ServedVersion,
)
from aliasroll.planning.workloads import Manifest, WorkloadDefaults
from aliasroll.routers import TrafficInput, TrafficPlan, router_for
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, Track

HISTORY_LIMIT = 20
# Registry-level failures: the registry gave no usable answer at all.
_REGISTRY_FAILURES = {
    reasons.REGISTRY_UNREACHABLE,
    reasons.REGISTRY_AUTH_FAILED,
    reasons.REGISTRY_REJECTED,
    reasons.CREDENTIALS_NOT_FOUND,
}


@dataclass(frozen=True)
class Plan:
    objects: tuple[Manifest, ...]
    prune: tuple[ChildRef, ...]
    status: dict[str, Any]
    events: tuple[EventRecord, ...]


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
) -> Plan:
    model = spec.model.name
    current = {track: _current(track, model, observed, previous_status) for track in Track}
    production = decide_production(spec=spec, view=view, current=current[Track.PRODUCTION])
    canary = decide_canary(spec=spec, view=view, current=current[Track.CANARY], production=production.target)

    objects: list[Manifest] = []
    traffic: TrafficPlan | None = None
    prune: tuple[ChildRef, ...] = ()
    if production.target is not None:
        traffic = router_for(spec.traffic.router).plan(
            TrafficInput(
                owner=owner, spec=spec, production=production.target, canary=canary.target, observed=observed
            )
        )
        versions = {Track.PRODUCTION: production.target, Track.CANARY: canary.target}
        for track, replicas in traffic.replicas.items():
            version = versions[track]
            assert version is not None, "routers only give replicas to tracks with a version"
            objects.append(
                workloads.deployment(
                    owner=owner, spec=spec, track=track, version=version, replicas=replicas, defaults=defaults
                )
            )
        objects.extend(traffic.objects)
        prune = _prunable(
            owner, objects, observed, production.target, canary_wanted=canary.target is not None
        )
    # With nothing to serve yet (first deploy and no usable answer), nothing is created or pruned.

    status, events = _status(
        owner=owner,
        spec=spec,
        view=view,
        observed=observed,
        previous=previous_status,
        production=production,
        canary=canary,
        traffic=traffic,
        now=timestamp(now),
    )
    return Plan(objects=tuple(objects), prune=prune, status=status, events=tuple(events))


def _current(
    track: Track, model: str, observed: ObservedState, previous_status: Mapping[str, Any]
) -> ServedVersion | None:
    """What a track runs now: the Deployment's pinned version, else what status last said."""
    workload = observed.workloads.get(track)
    if workload is not None and workload.version and workload.model == model:
        return ServedVersion(model=model, version=workload.version, run_id=workload.run_id)
    recorded = previous_status.get(track.value) or {}
    version = recorded.get("version")
    if version and recorded.get("modelUri") == f"models:/{model}/{version}":
        return ServedVersion(model=model, version=str(version), run_id=recorded.get("runId"))
    return None


def _settled(observed: ObservedState, track: Track, version: ServedVersion | None) -> bool:
    """True when the track's Deployment runs `version` on all its replicas."""
    workload = observed.workloads.get(track)
    return (
        version is not None
        and workload is not None
        and workload.version == version.version
        and workload.model == version.model
        and workload.rolled_out
    )


def _scaled(workload: ObservedWorkload, wanted: int) -> bool:
    """The track runs exactly `wanted` pods: its spec says so, and no surplus pod of a scale-down
    is still counted available (the achieved split would be reported too early)."""
    return workload.replicas == wanted and workload.available <= wanted


def _prunable(
    owner: ResourceRef,
    desired: list[Manifest],
    observed: ObservedState,
    production: ServedVersion,
    *,
    canary_wanted: bool,
) -> tuple[ChildRef, ...]:
    wanted = {(item["kind"], item["metadata"]["name"]) for item in desired}
    # A canary that is no longer wanted keeps serving until production has rolled (a promotion
    # must not lose the capacity the canary gives while production pods are replaced).
    draining: set[tuple[str, str]] = set()
    if not canary_wanted and not _settled(observed, Track.PRODUCTION, production):
        canary_name = workloads.workload_name(owner, Track.CANARY)
        draining = {("Deployment", canary_name), ("Service", canary_name)}
    return tuple(
        child
        for child in observed.children
        if (child.kind, child.name) not in wanted and (child.kind, child.name) not in draining
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
    traffic: TrafficPlan | None,
    now: str,
) -> tuple[dict[str, Any], list[EventRecord]]:
    events: list[EventRecord] = []
    history = [dict(entry) for entry in previous.get("history") or ()]
    previous_versions = {track: (previous.get(track.value) or {}).get("version") for track in Track}

    # Version changes: history spans and the Normal events of the audit trail.
    tracks_status: dict[str, dict[str, Any]] = {}
    for track, decision in ((Track.PRODUCTION, production), (Track.CANARY, canary)):
        before = previous_versions[track]
        after = decision.target.version if decision.target else None
        since = (previous.get(track.value) or {}).get("since")
        if after != before:
            reason, message = _change_event(
                track=track,
                before=before,
                after=after,
                spec=spec,
                decision=decision,
                promoted_from_canary=previous_versions[Track.CANARY],
            )
            if (
                track is Track.CANARY
                and after is None
                and production.target is not None
                and before == production.target.version
            ):
                reason, message = "", ""  # told once, as CanaryPromoted on the production track
            if reason:
                events.append(EventRecord("Normal", reason, message))
            history = _close(history, track=track, now=now)
            if after is not None:
                history.append({"track": track.value, "version": after, "from": now, "reason": reason})
            since = now
        if decision.target is not None and traffic is not None:
            workload = observed.workloads.get(track)
            alias = (
                spec.model.alias if track is Track.PRODUCTION else (spec.canary.alias if spec.canary else "")
            )
            tracks_status[track.value] = {
                "alias": alias,
                "version": decision.target.version,
                "modelUri": decision.target.uri,
                "runId": decision.target.run_id,
                "since": since,
                "replicas": traffic.replicas.get(track, 0),
                "availableReplicas": workload.available if workload else 0,
            }
            tracks_status[track.value] = {
                k: v for k, v in tracks_status[track.value].items() if v is not None
            }
    history = _bounded(history)

    requested = spec.canary.weight if spec.canary and canary.target else 0
    previous_traffic = previous.get("traffic") or {}
    if (
        canary.target is not None
        and previous_versions[Track.CANARY] == canary.target.version
        and previous_traffic.get("requestedCanaryWeight") not in (None, requested)
    ):
        events.append(
            EventRecord(
                "Normal",
                reasons.TRAFFIC_SHIFTED,
                f"canary weight changed from {previous_traffic['requestedCanaryWeight']}% to {requested}%",
            )
        )

    wanted = _conditions(
        spec=spec, view=view, observed=observed, production=production, canary=canary, traffic=traffic
    )
    previous_conditions = list(previous.get("conditions") or ())
    events += _condition_events(previous_conditions, wanted)
    status: dict[str, Any] = {"observedGeneration": owner.generation, **tracks_status}
    if traffic is not None:
        status["traffic"] = {
            "router": spec.traffic.router.value,
            "requestedCanaryWeight": requested,
            "canaryWeight": traffic.canary_weight,
            "message": traffic.message,
        }
    aliases = {
        target.alias: target.version
        for target in (view.production, view.canary)
        if target is not None and target.version is not None
    }
    if view.error is None:
        status["registry"] = {"trackingUri": spec.registry.tracking_uri}
        if aliases:  # an empty map would be sent as null, which the status schema refuses
            status["registry"]["aliases"] = aliases
    elif previous.get("registry"):
        status["registry"] = dict(previous["registry"])  # last answer stands until a new one comes
    if history:
        status["history"] = history
    status["conditions"] = conditions.merge(
        previous_conditions, wanted, now=now, observed_generation=owner.generation
    )
    return status, events


def _change_event(
    *,
    track: Track,
    before: str | None,
    after: str | None,
    spec: ModelDeploymentSpec,
    decision: TrackDecision,
    promoted_from_canary: str | None,
) -> tuple[str, str]:
    model = spec.model.name
    if track is Track.PRODUCTION:
        alias = spec.model.alias
        if after is None:
            return "", ""
        if before is None:
            return reasons.ROLLOUT_STARTED, f"deploying version {after} of {model!r} (@{alias})"
        if after == promoted_from_canary:
            return reasons.CANARY_PROMOTED, (
                f"@{alias} moved to the canary's version {after}: production rolls from {before} to "
                f"{after} and the canary ends"
            )
        old = ServedVersion(model=model, version=before)
        new = ServedVersion(model=model, version=after)
        if is_rollback(old, new):
            return (
                reasons.ROLLBACK_STARTED,
                f"@{alias} moved back: rolling production from {before} to {after}",
            )
        return reasons.ROLLOUT_STARTED, f"@{alias} moved: rolling production from {before} to {after}"
    alias = spec.canary.alias if spec.canary else "canary"
    weight = spec.canary.weight if spec.canary else 0
    if after is None:
        why = (
            "the canary weight is 0"
            if spec.canary and spec.canary.weight == 0
            else ("spec.canary was removed" if spec.canary is None else f"@{alias} is not set")
        )
        return reasons.CANARY_REMOVED, f"canary version {before} removed: {why}"
    if before is None:
        return reasons.CANARY_STARTED, f"canary version {after} (@{alias}) starts with {weight}% of requests"
    return reasons.CANARY_UPDATED, f"@{alias} moved: canary rolls from {before} to {after}"


def _close(history: list[dict[str, Any]], *, track: Track, now: str) -> list[dict[str, Any]]:
    return [
        {**entry, "to": now} if entry.get("track") == track.value and "to" not in entry else entry
        for entry in history
    ]


def _bounded(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Drop the oldest finished spans first; open spans (what serves now) always stay.
    while len(history) > HISTORY_LIMIT:
        oldest_closed = next((i for i, entry in enumerate(history) if "to" in entry), 0)
        del history[oldest_closed]
    return history


def _conditions(
    *,
    spec: ModelDeploymentSpec,
    view: RegistryView,
    observed: ObservedState,
    production: TrackDecision,
    canary: TrackDecision,
    traffic: TrafficPlan | None,
) -> list[Condition]:
    error = view.error
    if error is not None and error.reason in _REGISTRY_FAILURES:
        registry = Condition(reasons.REGISTRY_REACHABLE, FALSE, error.reason, error.message)
        resolved = Condition(
            reasons.ALIASES_RESOLVED,
            UNKNOWN,
            reasons.REGISTRY_NOT_CONSULTED,
            "the registry gave no answer; the versions that run now keep running",
        )
    else:
        registry = Condition(
            reasons.REGISTRY_REACHABLE,
            TRUE,
            reasons.REGISTRY_ANSWERED,
            f"the registry at {spec.registry.tracking_uri} answers",
        )
        problems = [decision.problem for decision in (production, canary) if decision.problem is not None]
        if problems:
            resolved = Condition(
                reasons.ALIASES_RESOLVED,
                FALSE,
                problems[0].reason,
                "; ".join(problem.message for problem in problems),
            )
        else:
            pointed = [f"@{spec.model.alias} -> {production.pointed_at}"]
            if spec.canary is not None and canary.pointed_at:
                pointed.append(f"@{spec.canary.alias} -> {canary.pointed_at}")
            resolved = Condition(reasons.ALIASES_RESOLVED, TRUE, reasons.RESOLVED, ", ".join(pointed))

    # Progress of the wanted workloads towards their versions.
    if production.target is None or traffic is None:
        why = production.problem.message if production.problem else "no version resolved yet"
        progressing = Condition(reasons.PROGRESSING, FALSE, reasons.NOTHING_TO_SERVE, why)
        ready = Condition(reasons.READY, FALSE, reasons.NOTHING_TO_SERVE, why)
        return [ready, progressing, registry, resolved]
    rolling: list[str] = []
    stalled: list[str] = []
    for track, decision in ((Track.PRODUCTION, production), (Track.CANARY, canary)):
        if decision.target is None:
            continue
        workload = observed.workloads.get(track)
        if workload is not None and workload.stalled:
            stalled.append(f"{track.value} rolling to version {decision.target.version}: {workload.stalled}")
        elif not _settled(observed, track, decision.target):
            available = workload.available if workload else 0
            rolling.append(
                f"{track.value} rolling to version {decision.target.version} "
                f"({available}/{traffic.replicas.get(track, 0)} available)"
            )
        elif workload is not None and not _scaled(workload, traffic.replicas.get(track, 0)):
            # The replica split is not in place while a track still scales.
            rolling.append(
                f"{track.value} scaling from {workload.available} to {traffic.replicas.get(track, 0)} pods"
            )
    serving = f"version {production.target.version} serves production"
    if canary.target is not None:
        serving += f", canary version {canary.target.version} gets {traffic.canary_weight}% of requests"
    caveat = ""
    if registry.status != TRUE:
        caveat = "; alias moves are not followed until the registry answers"
    if stalled:
        progressing = Condition(reasons.PROGRESSING, FALSE, reasons.ROLLOUT_STALLED, "; ".join(stalled))
        ready = Condition(
            reasons.READY,
            FALSE,
            reasons.ROLLOUT_STALLED,
            "; ".join(stalled) + "; the previous pods keep serving",
        )
    elif rolling:
        progressing = Condition(reasons.PROGRESSING, TRUE, reasons.ROLLING_OUT, "; ".join(rolling))
        ready = Condition(reasons.READY, FALSE, reasons.ROLLING_OUT, "; ".join(rolling))
    else:
        progressing = Condition(reasons.PROGRESSING, FALSE, reasons.ROLLOUT_COMPLETE, serving)
        ready = Condition(reasons.READY, TRUE, reasons.SERVING, serving + caveat)
    return [ready, progressing, registry, resolved]


def _condition_events(previous: list[Mapping[str, Any]], wanted: list[Condition]) -> list[EventRecord]:
    """Warnings when a condition turns bad (or bad for a new reason); RolloutComplete when a roll ends."""
    events: list[EventRecord] = []
    for condition in wanted:
        old = conditions.find(previous, condition.type)
        changed = old is None or (old.get("status"), old.get("reason")) != (
            condition.status,
            condition.reason,
        )
        if not changed:
            continue
        healthy = condition.status == TRUE or condition.reason in (
            reasons.ROLLOUT_COMPLETE,
            reasons.ROLLING_OUT,
            reasons.REGISTRY_NOT_CONSULTED,
            reasons.SERVING,
        )
        if condition.type == reasons.PROGRESSING and condition.reason == reasons.ROLLOUT_COMPLETE:
            if old is not None and old.get("reason") == reasons.ROLLING_OUT:
                events.append(EventRecord("Normal", reasons.ROLLOUT_COMPLETE, condition.message))
        elif not healthy and condition.type != reasons.READY:
            events.append(EventRecord("Warning", condition.reason, condition.message))
    return events
