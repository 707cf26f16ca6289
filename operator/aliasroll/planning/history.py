"""The audit trail: which version served which track, from when to when, and the events that say so.

A track "serves" a version from the pass whose plan pins that version in the track's Deployment
(and that the applier then wrote) until a later plan pins another one, or the track's Deployment
goes. A version is the pair (model, version number): renaming spec.model.name to a model whose alias
has the same number is a change like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aliasroll import reasons
from aliasroll.planning.decide import TrackDecision, is_rollback
from aliasroll.planning.state import EventRecord, ServedVersion
from aliasroll.spec import ModelDeploymentSpec, Track

HISTORY_LIMIT = 20


@dataclass(frozen=True)
class TrackChanges:
    history: list[dict[str, Any]]
    since: dict[Track, str]  # when each serving track started serving its version
    events: list[EventRecord]


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
    now: str,
) -> TrackChanges:
    history = [dict(entry) for entry in previous.get("history") or ()]
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
            track=track, before=old, after=new, spec=spec, canary=canary, canary_before=before[Track.CANARY]
        )
        promoted = served.get(Track.PRODUCTION)
        if track is Track.CANARY and new is None and _same(old, promoted):
            reason, message = "", ""  # told once, as CanaryPromoted on the production track
        if reason:
            events.append(EventRecord("Normal", reason, message))
        history = _close(history, track=track, now=now)
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
    return TrackChanges(history=_bounded(history), since=since, events=events)


def change_event(
    *,
    track: Track,
    before: ServedVersion | None,
    after: ServedVersion | None,
    spec: ModelDeploymentSpec,
    canary: TrackDecision,
    canary_before: ServedVersion | None,
) -> tuple[str, str]:
    """(reason, message) of the Normal event that announces a track's change; ("", "") for none."""
    if track is Track.PRODUCTION:
        return _production_event(before=before, after=after, spec=spec, canary_before=canary_before)
    alias = spec.canary.alias if spec.canary else "canary"
    if after is None:
        return reasons.CANARY_REMOVED, f"canary {_name(before, spec)} removed: {_why_no_canary(spec, canary)}"
    weight = spec.canary.weight if spec.canary else 0
    if before is None:
        return reasons.CANARY_STARTED, (
            f"canary {_name(after, spec)} (@{alias}) starts with {weight}% of requests"
        )
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


def _why_no_canary(spec: ModelDeploymentSpec, canary: TrackDecision) -> str:
    if spec.canary is None:
        return "spec.canary was removed"
    if spec.canary.weight == 0:
        return "the canary weight is 0"
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
