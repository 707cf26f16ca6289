"""A track's pods counted two ways: those of the version it names, and all that take its requests.

During a roll a track's Deployment runs two versions: the one its pod template pins (on the new
pods) and the previous one (on the old pods, which keep serving until the new ones are available).
Status and conditions speak of a version, so `ObservedWorkload.available` counts only the pods of the
version the Deployment pins: `status.production: {version: "2", availableReplicas: 2}` is never
version 1's two pods. Routers speak of what a track's Service reaches, every available pod of the
track whatever it runs: `serving`. Once a roll is over both are the same number.

Kept beside planning/state.py's ObservedWorkload until that type carries `serving` itself; code that
builds a plain ObservedWorkload (tests, simulations) gets `serving == available`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aliasroll.planning.state import ObservedWorkload


@dataclass(frozen=True)
class ObservedTrack(ObservedWorkload):
    """An owned Deployment as kube/observe.py reduces it, with its pods counted by version."""

    # Available pods of the track, of any version: what its Service sends requests to.
    serving: int = 0


def serving(workload: ObservedWorkload | None) -> int:
    """Available pods of the track, whatever version they run (0 without a Deployment)."""
    if workload is None:
        return 0
    if isinstance(workload, ObservedTrack):
        return max(workload.serving, workload.available)
    return workload.available


def previous_serving(workload: ObservedWorkload | None) -> int:
    """Available pods of the track that run another version than the one its Deployment pins."""
    return serving(workload) - (workload.available if workload is not None else 0)
