"""The audit trail: which version served which track, from when to when, and the events that say so.

A track "serves" a version from the pass whose plan pins that version in the track's Deployment
(and that the applier then wrote) until a later plan pins another one, or the track's Deployment
goes. A version is the pair (model, version number): renaming spec.model.name to a model whose alias
has the same number is a change like any other. A canary span closed by its run's end says how it
ended (`outcome`: Aborted or Succeeded).

Status keeps the latest spans of each track (HISTORY_LIMITS), so `kubectl describe` stays short and
a burst of canaries never pushes out what served production; the version tags in MLflow
(planning/registry_writes.py) keep every span.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aliasroll import reasons
from aliasroll.planning.canary import CanaryRun
from aliasroll.planning.state import EventRecord, ServedVersion
from aliasroll.planning.status import HistorySpan
from aliasroll.planning.version_decision import TrackDecision, is_rollback
from aliasroll.spec import ModelDeploymentSpec, Track

# Spans kept in status per track, the open one included.
HISTORY_LIMITS: dict[Track, int] = {Track.PRODUCTION: 4, Track.CANARY: 2}
HISTORY_LIMIT = sum(HISTORY_LIMITS.values())


@dataclass(frozen=True)
class TrackChanges:
    history: list[HistorySpan]
    since: dict[Track, str]  # when each serving track started serving its version
    events: list[EventRecord]
    # Finished spans this pass dropped from status (HISTORY_LIMITS): their tags are planned once
    # more by this pass, so a span's end reaches MLflow even when it leaves status at once.
    dropped: list[HistorySpan] = field(default_factory=list)


def recorded(previous: Mapping[str, Any], track: Track, *, model: str) -> ServedVersion | None:
    """What the last written status says the track served (`model` if it does not name one)."""
    entry = previous.get(track.value) or {}
    version = entry.get("version")
    if not version or not serving(entry):
        return None
    named, _, _ = str(entry.get("modelUri", "")).removeprefix("models:/").rpartition("/")
    return ServedVersion(model=named or model, version=str(version), run_id=entry.get("runId"))


def serving(entry: Mapping[str, Any]) -> bool:
    """Whether a track's status entry names a version that runs: an ended canary run's record
    (Aborted, Succeeded, no pods left) names one that does not."""
    return not (entry.get("phase") in ("Aborted", "Succeeded") and not entry.get("replicas"))


def track_changes(
    *,
    spec: ModelDeploymentSpec,
    previous: Mapping[str, Any],
    served: Mapping[Track, ServedVersion | None],
    canary: TrackDecision,
    share: str,
    ended: CanaryRun | None,
    now: str,
) -> TrackChanges:
    """The history after this pass, when each serving track started, and the events of its changes.
    `share` states the canary's share in place (and the one asked where they differ); `ended` is
    the canary run if it ended, whose outcome a canary span it closes keeps."""
    history = [cast("HistorySpan", dict(entry)) for entry in previous.get("history") or ()]
    events: list[EventRecord] = []
    since: dict[Track, str] = {}
    before = {track: recorded(previous, track, model=spec.model.name) for track in Track}
    for track in Track:
        old, new = before[track], served.get(track)
        if _same(old, new):
            if new is not None:
                since[track] = (previous.get(track.value) or {}).get("since") or now
            continue
        reason, message = change_event(
            track=track,
            before=old,
            after=new,
            spec=spec,
            canary=canary,
            canary_before=before[Track.CANARY],
            share=share,
            ended=ended,
        )
        promoted = served.get(Track.PRODUCTION)
        if track is Track.CANARY and new is None and _same(old, promoted):
            reason, message = "", ""  # told once, as CanaryPromoted on the production track
        if reason:
            events.append(EventRecord("Normal", reason, message))
        outcome = (
            ended.phase.value
            if track is Track.CANARY
            and ended is not None
            and old is not None
            and old.version == ended.version
            else None
        )
        history = _close(history, track=track, now=now, outcome=outcome)
        if new is not None:
            history.append(
                {
                    "track": track.value,
                    "model": new.model,
                    "version": new.version,
                    "from": now,
                    "reason": reason,
                }
            )
            since[track] = now
    kept, dropped = _bounded(history)
    return TrackChanges(history=kept, since=since, events=events, dropped=dropped)


def change_event(
    *,
    track: Track,
    before: ServedVersion | None,
    after: ServedVersion | None,
    spec: ModelDeploymentSpec,
    canary: TrackDecision,
    canary_before: ServedVersion | None,
    share: str,
    ended: CanaryRun | None = None,
) -> tuple[str, str]:
    """(reason, message) of the Normal event that announces a track's change; ("", "") for none."""
    if track is Track.PRODUCTION:
        return _production_event(before=before, after=after, spec=spec, canary_before=canary_before)
    alias = spec.canary.alias if spec.canary else "canary"
    if after is None:
        return reasons.CANARY_REMOVED, (
            f"canary {_name(before, spec)} removed: {_why_no_canary(spec, canary, before, ended)}"
        )
    if before is None:
        return reasons.CANARY_STARTED, f"canary {_name(after, spec)} (@{alias}) starts; in place now: {share}"
    return (
        reasons.CANARY_UPDATED,
        f"@{alias} moved: canary rolls from {_name(before, spec)} to {after.version}",
    )


def _production_event(
    *,
    before: ServedVersion | None,
    after: ServedVersion | None,
    spec: ModelDeploymentSpec,
    canary_before: ServedVersion | None,
) -> tuple[str, str]:
    alias = spec.model.alias
    if after is None:
        return "", ""
    if before is None:
        return reasons.ROLLOUT_STARTED, f"deploying version {after.version} of {after.model!r} (@{alias})"
    if before.model != after.model:
        return reasons.ROLLOUT_STARTED, (
            f"spec.model.name changed: rolling production from {before.uri} to {after.uri}"
        )
    if _same(after, canary_before):
        return reasons.CANARY_PROMOTED, (
            f"@{alias} moved to the canary's version {after.version}: production rolls from "
            f"{before.version} to {after.version} and the canary ends"
        )
    if is_rollback(before, after):
        return reasons.ROLLBACK_STARTED, (
            f"@{alias} moved back: rolling production from {before.version} to {after.version}"
        )
    return (
        reasons.ROLLOUT_STARTED,
        f"@{alias} moved: rolling production from {before.version} to {after.version}",
    )


def _why_no_canary(
    spec: ModelDeploymentSpec, canary: TrackDecision, before: ServedVersion | None, ended: CanaryRun | None
) -> str:
    if ended is not None and before is not None and ended.version == before.version:
        return f"its canary run ended {ended.phase.value}"
    if spec.canary is None:
        return "spec.canary was removed"
    if spec.canary.weight == 0 and not spec.canary.steps:
        return "spec.canary.weight is 0"
    if canary.pointed_at is not None:
        return f"@{spec.canary.alias} points at the production version"
    return f"@{spec.canary.alias} is not set"


def _name(version: ServedVersion | None, spec: ModelDeploymentSpec) -> str:
    if version is None:
        return "(none)"
    if version.model and version.model != spec.model.name:
        return f"{version.uri}"
    return f"version {version.version}"


def _same(a: ServedVersion | None, b: ServedVersion | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.model, a.version) == (b.model, b.version)


def _close(history: list[HistorySpan], *, track: Track, now: str, outcome: str | None) -> list[HistorySpan]:
    closed: list[HistorySpan] = []
    for entry in history:
        if entry.get("track") == track.value and "to" not in entry:
            entry = entry.copy()
            entry["to"] = now
            if outcome:
                entry["outcome"] = outcome
        closed.append(entry)
    return closed


def _bounded(history: list[HistorySpan]) -> tuple[list[HistorySpan], list[HistorySpan]]:
    """The latest spans of each track (its oldest finished spans go first; an open span, what serves
    now, always stays), and the ones dropped."""
    dropped: list[HistorySpan] = []
    for track, limit in HISTORY_LIMITS.items():
        while (
            len(spans := [i for i, entry in enumerate(history) if entry.get("track") == track.value]) > limit
        ):
            oldest_closed = next((i for i in spans if "to" in history[i]), spans[0])
            dropped.append(history.pop(oldest_closed))
    return history, dropped
