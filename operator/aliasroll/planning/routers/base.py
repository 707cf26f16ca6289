"""The router interface and what routers share.

A router answers two questions, both pure: where the split should end up (`split`: replicas per
track once the transition is over), and how requests are routed given the replicas this pass runs
(`route`: Services, routes, the canary's share now). How fast the cluster may move from the running
split to the router's is not the router's business: planning/capacity.py decides that, once, for
every router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aliasroll.planning.observed import serving
from aliasroll.planning.state import ObservedState, ServedVersion
from aliasroll.planning.workloads import Manifest
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, RouterKind, Track


@dataclass(frozen=True)
class TrafficInput:
    owner: ResourceRef
    spec: ModelDeploymentSpec
    production: ServedVersion
    canary: ServedVersion | None  # None: no canary is wanted (one may still be draining)
    observed: ObservedState
    # The weight asked now: a stepped canary's current step; None: spec.canary.weight.
    weight: int | None = None

    def available(self, track: Track) -> int:
        """The track's available pods, whatever version each runs: what its Service reaches (during
        a roll, the previous version's pods serve beside the new one's)."""
        return serving(self.observed.workloads.get(track))

    @property
    def requested_weight(self) -> int:
        if self.canary is None or self.spec.canary is None:
            return 0
        return self.spec.canary.weight if self.weight is None else self.weight


@dataclass(frozen=True)
class Routing:
    objects: tuple[Manifest, ...]  # routing objects: Services, routes
    canary_weight: int  # share of requests the canary gets now, in percent
    message: str
    # What sets the share in place, in a few words ("1 of 4 ready pods run the canary"): said
    # beside it wherever it differs from the share asked (`share`).
    why: str = ""


class TrafficRouter(Protocol):
    kind: RouterKind

    def split(self, traffic: TrafficInput) -> Mapping[Track, int]:
        """Replicas of each wanted track once the split is in place (no canary key: no canary)."""
        ...

    def route(self, traffic: TrafficInput, replicas: Mapping[Track, int]) -> Routing:
        """Routing objects for the tracks in `replicas` (a canary there but not wanted is
        draining). Never sends a track more requests than its available pods can carry, and no
        request to a track without an available pod."""
        ...


def share(served: int, requested: int, why: str = "") -> str:
    """The canary's share as every event and condition states it: the one in place (what
    status.traffic.canaryWeight says), and the one asked where they differ:
    '25% of requests (20% requested; 1 of 4 ready pods run the canary)', or '20% of requests'."""
    if served == requested:
        return f"{served}% of requests"
    because = f"; {why}" if why else ""
    return f"{served}% of requests ({requested}% requested{because})"


def percent(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0
