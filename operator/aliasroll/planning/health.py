"""The conditions of a plan, one small decision each: can the registry be read, do the aliases
resolve, and is what serves in place (Ready, Progressing).

Ready follows the Kubernetes conventions, so kstatus-based tools read it: True only once every
track runs its version with the split in place; False with the reason that says why not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from aliasroll import conditions, reasons
from aliasroll.analysis.judge import Verdict
from aliasroll.conditions import FALSE, TRUE, UNKNOWN, Condition
from aliasroll.planning.canary import CanaryRun, Phase
from aliasroll.planning.observed import previous_serving, serving
from aliasroll.planning.state import (
    EventRecord,
    ObservedState,
    ObservedWorkload,
    RegistryView,
    ServedVersion,
)
from aliasroll.planning.version_decision import TrackDecision
from aliasroll.spec import ModelDeploymentSpec, Track

# Registry-level failures: the registry gave no usable answer at all.
REGISTRY_FAILURES = frozenset(
    {
        reasons.REGISTRY_UNREACHABLE,
        reasons.REGISTRY_AUTH_FAILED,
        reasons.REGISTRY_REJECTED,
        reasons.CREDENTIALS_NOT_FOUND,
        reasons.DESTINATION_REFUSED,
    }
)
# Condition reasons that are not worth a Warning event when a condition takes them.
HEALTHY_REASONS = frozenset(
    {
        reasons.SERVING,
        reasons.SCALED_TO_ZERO,
        reasons.ROLLOUT_COMPLETE,
        reasons.ROLLING_OUT,
        reasons.SUSPENDED,
        reasons.REGISTRY_NOT_CONSULTED,
    }
)


@dataclass(frozen=True)
class Rollout:
    """What one pass puts in place, for the Ready and Progressing conditions."""

    served: Mapping[Track, ServedVersion]  # the version each running track's Deployment pins
    targets: Mapping[Track, int]  # the router's split once the transition is over
    # The canary's share in place, and the one asked where they differ (routers.share).
    canary_share: str


def registry_condition(spec: ModelDeploymentSpec, view: RegistryView) -> Condition:
    error = view.error
    if error is not None and error.reason in REGISTRY_FAILURES:
        return Condition(reasons.REGISTRY_REACHABLE, FALSE, error.reason, error.message)
    return Condition(
        reasons.REGISTRY_REACHABLE,
        TRUE,
        reasons.REGISTRY_ANSWERED,
        f"the registry at {spec.registry.tracking_uri} answers",
    )


def aliases_condition(
    spec: ModelDeploymentSpec, view: RegistryView, production: TrackDecision, canary: TrackDecision
) -> Condition:
    if view.error is not None and view.error.reason in REGISTRY_FAILURES:
        return Condition(
            reasons.ALIASES_RESOLVED,
            UNKNOWN,
            reasons.REGISTRY_NOT_CONSULTED,
            "the registry gave no answer; the versions that run now keep running",
        )
    problems = [decision.problem for decision in (production, canary) if decision.problem is not None]
    if problems:
        return Condition(
            reasons.ALIASES_RESOLVED,
            FALSE,
            problems[0].reason,
            "; ".join(problem.message for problem in problems),
        )
    pointed = [f"@{spec.model.alias} -> {production.pointed_at}"]
    if spec.canary is not None and canary.pointed_at:
        pointed.append(f"@{spec.canary.alias} -> {canary.pointed_at}")
    return Condition(reasons.ALIASES_RESOLVED, TRUE, reasons.RESOLVED, ", ".join(pointed))


def nothing_to_serve(production: TrackDecision) -> tuple[Condition, Condition]:
    why = production.problem.message if production.problem else "no version resolved yet"
    return (
        Condition(reasons.READY, FALSE, reasons.NOTHING_TO_SERVE, why),
        Condition(reasons.PROGRESSING, FALSE, reasons.NOTHING_TO_SERVE, why),
    )


def rollout_conditions(
    *,
    spec: ModelDeploymentSpec,
    observed: ObservedState,
    rollout: Rollout,
    registry_ok: bool,
    not_followed: str | None,
    previous: Sequence[Mapping[str, object]] = (),
) -> tuple[Condition, Condition]:
    """(Ready, Progressing). `not_followed` says why alias moves are not followed now, if they
    aren't; `previous` is the resource's conditions before this pass (status.conditions), which
    keep a stall in place through a moment with no evidence of it (`still_stalled`)."""
    stalled: list[str] = []
    serving_now: list[str] = []  # for a stalled track: what serves it meanwhile
    moving: list[str] = []
    for track, version in rollout.served.items():
        state = _track_state(track, version, observed.workloads.get(track), rollout, previous)
        if state.stalled is not None:
            stalled.append(state.stalled)
            serving_now += [state.meanwhile] if state.meanwhile else []
        elif state.moving is not None:
            moving.append(state.moving)

    production = rollout.served[Track.PRODUCTION]
    serves = f"version {production.version} serves production"
    canary = rollout.served.get(Track.CANARY)
    if canary is not None and Track.CANARY in rollout.targets:
        serves += f", canary version {canary.version} gets {rollout.canary_share}"
    caveat = "" if registry_ok else "; alias moves are not followed until the registry answers"
    if not_followed:
        caveat += f"; {not_followed}"
    if stalled:
        message = "; ".join(stalled)
        return (
            Condition(reasons.READY, FALSE, reasons.ROLLOUT_STALLED, "; ".join([message, *serving_now])),
            Condition(reasons.PROGRESSING, FALSE, reasons.ROLLOUT_STALLED, message),
        )
    if moving:
        message = "; ".join(moving)
        return (
            Condition(reasons.READY, FALSE, reasons.ROLLING_OUT, message),
            Condition(reasons.PROGRESSING, TRUE, reasons.ROLLING_OUT, message),
        )
    if not_followed:
        progressing = Condition(reasons.PROGRESSING, FALSE, reasons.SUSPENDED, not_followed)
    else:
        progressing = Condition(reasons.PROGRESSING, FALSE, reasons.ROLLOUT_COMPLETE, serves)
    if spec.replicas == 0:
        message = f"spec.replicas is 0: no pod serves; version {production.version} runs when scaled up"
        return Condition(reasons.READY, TRUE, reasons.SCALED_TO_ZERO, message + caveat), progressing
    return Condition(reasons.READY, TRUE, reasons.SERVING, serves + caveat), progressing


class _TrackState(NamedTuple):
    """One track's part of Ready and Progressing: stalled (and what serves it meanwhile), still
    moving, or neither (in place)."""

    stalled: str | None = None
    meanwhile: str | None = None
    moving: str | None = None


def _track_state(
    track: Track,
    version: ServedVersion,
    workload: ObservedWorkload | None,
    rollout: Rollout,
    previous: Sequence[Mapping[str, object]],
) -> _TrackState:
    final = rollout.targets.get(track, 0)
    # Pods of the version the track rolls to; `earlier` are the previous version's, still serving.
    available = workload.available if workload else 0
    earlier = previous_serving(workload)
    rolling = f"{track.value} rolling to version {version.version} ({available}/{final} available"
    why = None
    if workload is not None:
        why = stall_message(workload, version)
        if why is None and track in rollout.targets:
            why = still_stalled(previous, workload, version)
    if why is not None:
        meanwhile = None
        if earlier:
            meanwhile = f"the previous version keeps serving {track.value} on {_pods(earlier)}"
        elif not available:
            meanwhile = f"no pod serves {track.value}"
        return _TrackState(stalled=f"{rolling}): {why}", meanwhile=meanwhile)
    if track not in rollout.targets:
        return _TrackState(
            moving=f"{track.value} version {version.version} ending: {serving(workload)} pods left, "
            "removed as the other track's pods become available"
        )
    if not (workload is not None and settled(workload.model, workload.version, workload.rolled_out, version)):
        meanwhile_text = f"; the previous version serves on {_pods(earlier)} meanwhile" if earlier else ""
        return _TrackState(moving=f"{rolling}{meanwhile_text})")
    if workload.replicas != final or serving(workload) > final:
        # The split is not in place while a track still scales (surplus pods still count).
        return _TrackState(moving=f"{track.value} scaling from {serving(workload)} to {final} pods")
    return _TrackState()


def _pods(count: int) -> str:
    return f"{count} pod" if count == 1 else f"{count} pods"


def stall_message(workload: ObservedWorkload, wanted: ServedVersion) -> str | None:
    """Why the track's roll to `wanted` stands still: the Deployment's progress deadline passed, or
    a pod of the version fails (a requirement the index lacks, a Python the image cannot honour: its
    termination message says which; kube/observe.py counts a crash loop as failing in every state of
    its cycle); None while it moves. A pod failure of a version already in place is the pods' own
    business (restarts, probes), not a stalled roll."""
    failure = None
    if workload.pod_failure and not settled(workload.model, workload.version, workload.rolled_out, wanted):
        failure = workload.pod_failure
    return "; ".join(part for part in (workload.stalled, failure) if part) or None


# One track's entry in a RolloutStalled message, "production rolling to version 2 (0/2 available): why"
# ("production rolling to version 2: why" before the counts were added).
_STALLED_ENTRY = re.compile(
    r"(?P<track>production|canary) rolling to version (?P<version>[^ :]+)"
    r"(?: \((?P<available>\d+)/\d+ available[^)]*\))?: (?P<why>.*)",
    re.DOTALL,
)
_ENTRY_START = re.compile(r"; (?=(?:production|canary) rolling to version )")


def still_stalled(
    previous: Sequence[Mapping[str, object]], workload: ObservedWorkload, wanted: ServedVersion
) -> str | None:
    """Why the track's roll to `wanted` is still stalled when this pass sees no evidence of it, or
    None.

    A stall stays put: once the roll of a version stalled (its Deployment's progress deadline
    passed, or its pods failed), it is stalled until the version actually progresses (more of its
    pods available than when the stall was last seen, or all of them: settled) or the track rolls
    to another version (the alias moved). A moment without evidence is no progress: a crashing
    pod replaced by a new one that has not failed yet, a Deployment whose deadline its controller
    restarts when it gets more replicas. So Ready does not flip back to RollingOut, nor a Warning
    repeat, for as long as the stall lasts; its cause is kept as last seen.
    """
    if settled(workload.model, workload.version, workload.rolled_out, wanted):
        return None
    before = conditions.find(previous, reasons.PROGRESSING)
    if before is None or (before.get("status"), before.get("reason")) != (FALSE, reasons.ROLLOUT_STALLED):
        return None
    for entry in _ENTRY_START.split(str(before.get("message") or "")):
        found = _STALLED_ENTRY.fullmatch(entry)
        if (
            found is not None
            and found["track"] == workload.track.value
            and found["version"] == wanted.version
            and workload.available <= int(found["available"] or 0)
        ):
            return found["why"]
    return None


def settled(model: str | None, version: str | None, rolled_out: bool, wanted: ServedVersion) -> bool:
    """The track's Deployment runs `wanted` on all its replicas."""
    return rolled_out and model == wanted.model and version == wanted.version


def condition_events(previous: list[Mapping[str, object]], wanted: list[Condition]) -> list[EventRecord]:
    """Warnings when a condition turns bad (or bad for a new reason); RolloutComplete when a roll
    ends; Suspended when alias moves stop being followed."""
    events: list[EventRecord] = []
    for condition in wanted:
        old = conditions.find(previous, condition.type)
        if old is not None and (old.get("status"), old.get("reason")) == (condition.status, condition.reason):
            continue
        if condition.type == reasons.PROGRESSING and condition.reason == reasons.ROLLOUT_COMPLETE:
            if old is not None and old.get("reason") == reasons.ROLLING_OUT:
                events.append(EventRecord("Normal", reasons.ROLLOUT_COMPLETE, condition.message))
        elif condition.type == reasons.PROGRESSING and condition.reason == reasons.SUSPENDED:
            events.append(EventRecord("Normal", reasons.SUSPENDED, condition.message))
        elif (
            condition.type not in (reasons.READY, reasons.CANARY_HEALTHY)  # the canary's own events tell
            and condition.status != TRUE
            and condition.reason not in HEALTHY_REASONS
        ):
            # Ready's own reason always repeats another condition's: warn once, on that one. A
            # canary's steps, failures and abort have events of their own (planning/canary.py).
            events.append(EventRecord("Warning", condition.reason, condition.message))
    return events


def canary_condition(spec: ModelDeploymentSpec, run: CanaryRun | None) -> Condition | None:
    """CanaryHealthy, for a canary with an analysis: what its last measurement says, or why it ended."""
    if spec.canary is None or spec.canary.analysis is None or run is None:
        return None
    if run.phase is Phase.ABORTED:
        return Condition(
            reasons.CANARY_HEALTHY, FALSE, reasons.CANARY_ABORTED, f"version {run.version} {run.message}"
        )
    if run.phase is Phase.SUCCEEDED:
        return Condition(
            reasons.CANARY_HEALTHY, TRUE, reasons.CANARY_PROMOTED, f"version {run.version} was promoted"
        )
    if run.verdict is Verdict.PASSED:
        return Condition(reasons.CANARY_HEALTHY, TRUE, reasons.ANALYSIS_PASSED, run.message)
    if run.verdict is Verdict.FAILED:
        return Condition(reasons.CANARY_HEALTHY, FALSE, reasons.ANALYSIS_FAILED, run.message)
    reason = (
        reasons.ANALYSIS_INCONCLUSIVE if run.verdict is Verdict.INCONCLUSIVE else reasons.NOT_MEASURED_YET
    )
    return Condition(reasons.CANARY_HEALTHY, UNKNOWN, reason, run.message or "no measurement yet")


def at_rest(status: Mapping[str, object]) -> bool:
    """Nothing is under way or wrong: serving as the aliases say, rolled out, registry answering,
    records written (or being written: the tag writer wakes the resource when they are). Such a
    resource needs no timer of its own: its model's poller, the watch on its objects (rollouts,
    drift, a Deployment losing pods) and its Secret's watch wake it."""
    found = status.get("conditions")
    listed = [c for c in found if isinstance(c, Mapping)] if isinstance(found, list) else []

    def state(type_: str, absent: tuple[object, object] = (None, None)) -> tuple[object, object]:
        condition = conditions.find(listed, type_)
        return (condition.get("status"), condition.get("reason")) if condition is not None else absent

    return (
        state(reasons.READY) in ((TRUE, reasons.SERVING), (TRUE, reasons.SCALED_TO_ZERO))
        and state(reasons.PROGRESSING) == (FALSE, reasons.ROLLOUT_COMPLETE)
        and state(reasons.ALIASES_RESOLVED)[0] == TRUE
        and state(reasons.REGISTRY_REACHABLE)[0] == TRUE
        # No records to write yet, or written, or being written.
        and state(reasons.RECORDED, absent=(TRUE, None))[0] in (TRUE, UNKNOWN)
    )
