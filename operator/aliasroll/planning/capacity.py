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
that track's capacity on their own. A track that changes version grows only once it has rolled: the
Deployment controller treats a new replica count as a scaling event before a template change, and
would scale the *old* version up first, then roll every one of those pods (promotion from a 75%
canary: 1 old pod scaled to 4, then four cold starts in a row instead of one, then three at once).
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
    rolling: frozenset[Track] = frozenset(),
) -> dict[Track, int]:
    """Replicas to apply in this pass, for every track that wants pods or still runs them.

    `targets` has the tracks that should exist (a track absent from it is ending); `hold` lists
    ending tracks that must keep their current size whatever the arithmetic says (a canary
    stays until a promotion has rolled production); `rolling` lists tracks whose Deployment does not
    yet run its target version on every pod: they keep their size until it does, then grow. A track
    absent from the result may be pruned.
    """
    wanted_total = sum(targets.values())
    tracks = (*targets, *(t for t in running if t not in targets))
    current = {track: running[track].replicas if track in running else 0 for track in tracks}
    # Tracks that do not shrink know their size first; a shrinking track counts on them only up
    # to it (a track that defers its growth while it rolls covers no more than it runs).
    settled: dict[Track, int] = {}
    for track in tracks:
        target = targets.get(track, 0)
        if track in hold:
            settled[track] = max(target, current[track])
        elif track in rolling and 0 < current[track] < target:
            settled[track] = current[track]  # roll first (maxUnavailable 0 keeps capacity), then grow
        elif target >= current[track]:
            settled[track] = target
    result: dict[Track, int] = {}
    for track in tracks:
        target = targets.get(track, 0)
        if track in settled:
            desired = settled[track]
        else:
            covered = sum(
                min(state.available, settled.get(other, targets.get(other, 0)))
                for other, state in running.items()
                if other is not track
            )
            desired = min(current[track], max(target, wanted_total - covered))
        if desired > 0 or track in targets:
            result[track] = desired
    return result
