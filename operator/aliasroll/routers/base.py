"""The router interface and what routers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aliasroll.planning.state import ObservedState, ServedVersion
from aliasroll.planning.workloads import Manifest
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, RouterKind, Track


@dataclass(frozen=True)
class TrafficInput:
    owner: ResourceRef
    spec: ModelDeploymentSpec
    production: ServedVersion
    canary: ServedVersion | None  # None: no canary workload is wanted
    observed: ObservedState

    def available(self, track: Track) -> int:
        workload = self.observed.workloads.get(track)
        return workload.available if workload else 0

    @property
    def requested_weight(self) -> int:
        return self.spec.canary.weight if self.canary is not None and self.spec.canary else 0


@dataclass(frozen=True)
class TrafficPlan:
    replicas: Mapping[Track, int]  # desired replicas of each wanted track
    objects: tuple[Manifest, ...]  # routing objects: Services, routes
    canary_weight: int  # share of requests the canary gets now, in percent
    message: str


class TrafficRouter(Protocol):
    kind: RouterKind

    def plan(self, traffic: TrafficInput) -> TrafficPlan:
        """Replica counts and routing objects. Must never send traffic to a canary without
        available replicas, and must keep production at its full replica count until canary
        replicas are available to take their share."""
        ...
