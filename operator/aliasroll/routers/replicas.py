"""Replica-ratio split: one Service selects both tracks, and the share of pods sets the share of requests.

Needs no mesh or gateway. The split is as fine as the replica count allows (1 canary pod of 5 is
20%; of 2 it is 50%), and status says how close it gets. Production gives up pods only as canary
pods become available, so total ready capacity never drops below spec.replicas.
"""

from __future__ import annotations

from aliasroll.planning import workloads
from aliasroll.routers.base import TrafficInput, TrafficPlan
from aliasroll.spec import RouterKind, Track


class ReplicaRatioRouter:
    kind = RouterKind.REPLICAS

    def plan(self, traffic: TrafficInput) -> TrafficPlan:
        total = traffic.spec.replicas
        stable = workloads.service(
            owner=traffic.owner,
            name=traffic.owner.name,
            selector={workloads.LABEL_OWNER: traffic.owner.name},
            spec=traffic.spec,
        )
        weight = traffic.requested_weight
        if traffic.canary is None or total == 0 or weight == 0:
            return TrafficPlan(
                replicas={Track.PRODUCTION: total},
                objects=(stable,),
                canary_weight=0,
                message=f"all requests go to production ({total} replicas)",
            )
        canary = total if weight == 100 else max(1, round(total * weight / 100))
        canary_ready = traffic.available(Track.CANARY)
        production_floor = 0 if weight == 100 else 1
        production = max(production_floor, total - min(canary, canary_ready))
        production_ready = traffic.available(Track.PRODUCTION)
        achieved = _percent(canary_ready, canary_ready + production_ready)
        return TrafficPlan(
            replicas={Track.PRODUCTION: production, Track.CANARY: canary},
            objects=(stable,),
            canary_weight=achieved,
            message=(
                f"{canary_ready} of {canary_ready + production_ready} ready pods run the canary: about "
                f"{achieved}% of requests (asked {weight}%; the replicas router splits by pod count)"
            ),
        )


def _percent(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0
