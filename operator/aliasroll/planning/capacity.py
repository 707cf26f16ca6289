"""The capacity invariant, in one place: how many pods each track may run in this pass.

A router says where the split should end up (its targets); this module decides how far the cluster
may move towards it now. The rule, for every transition (canary start, weight up or down, canary
end, promotion, rollback, replica change) and every router:

- A track that must grow is given its target at once: new pods only add capacity.
- A track that must shrink gives up only what the other track's *available* pods already cover:
  it keeps `max(target, wanted total - other's available pods, counted up to the other's target)`,
  and never grows back while shrinking.

So ready pods across both tracks never fall below the wanted total (or below the previous total
while scaling down), and a track shrinks exactly as fast as the other's new pods become available.
Version changes inside a track are Kubernetes rolling updates with maxUnavailable 0, which keep
that track's capacity on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aliasroll.spec import Track


@dataclass(frozen=True)
class Running:
    """One track as the cluster runs it: its Deployment's replica count and available pods."""

    replicas: int
    available: int


def replicas_now(
    *,
    targets: Mapping[Track, int],
    running: Mapping[Track, Running],
    hold: frozenset[Track] = frozenset(),
) -> dict[Track, int]:
    """Replicas to apply in this pass, for every track that wants pods or still runs them.

    `targets` has the tracks that should exist (a track absent from it is ending); `hold` lists
    ending tracks that must keep their current size whatever the arithmetic says (a canary
    stays until a promotion has rolled production). A track absent from the result may be pruned.
    """
    wanted_total = sum(targets.values())
    result: dict[Track, int] = {}
    for track in (*targets, *(t for t in running if t not in targets)):
        target = targets.get(track, 0)
        current = running[track].replicas if track in running else 0
        if track in hold:
            desired = max(target, current)
        elif target >= current:
            desired = target
        else:
            covered = sum(
                min(state.available, targets.get(other, 0))
                for other, state in running.items()
                if other is not track
            )
            desired = min(current, max(target, wanted_total - covered))
        if desired > 0 or track in targets:
            result[track] = desired
    return result
