"""Replica-ratio split: one Service selects both tracks, and the share of pods sets the share of requests.

Needs no mesh or gateway. The split is as fine as the replica count allows (1 canary pod of 5 is
20%; of 2 it is 50%): status, events and conditions say the share in place, and the one asked where
they differ. Since the Service sends requests to ready pods only, the canary's share grows exactly as
its pods become available.
"""

from __future__ import annotations

from collections.abc import Mapping

from aliasroll.labels import LABEL_OWNER
from aliasroll.planning import workloads
from aliasroll.planning.routers.base import Routing, TrafficInput, percent, share
from aliasroll.spec import RouterKind, Track


class ReplicaRatioRouter:
    kind = RouterKind.REPLICAS

    def split(self, traffic: TrafficInput) -> Mapping[Track, int]:
        total = traffic.spec.replicas
        weight = traffic.requested_weight
        if traffic.canary is None or total == 0 or weight == 0:
            return {Track.PRODUCTION: total}
        if weight == 100:
            return {Track.PRODUCTION: 0, Track.CANARY: total}
        # Both tracks keep at least one pod while both are wanted (so 20% of 1 runs 1 + 1).
        canary = max(1, min(total - 1, round(total * weight / 100)))
        return {Track.PRODUCTION: max(1, total - canary), Track.CANARY: canary}

    def route(self, traffic: TrafficInput, replicas: Mapping[Track, int]) -> Routing:
        stable = workloads.service(
            owner=traffic.owner,
            name=traffic.owner.name,
            selector={LABEL_OWNER: traffic.owner.name},
            spec=traffic.spec,
        )
        production_ready = traffic.available(Track.PRODUCTION)
        asked = traffic.requested_weight
        if Track.CANARY not in replicas:
            message = f"all requests go to production ({replicas[Track.PRODUCTION]} replicas)"
            return Routing(objects=(stable,), canary_weight=0, message=message, why="no canary pod runs")
        canary_ready = traffic.available(Track.CANARY)
        ready = canary_ready + production_ready
        achieved = percent(canary_ready, ready)
        why = f"{canary_ready} of {ready} ready pods run the canary" if ready else "no pod is ready yet"
        if traffic.canary is None:
            message = (
                f"the canary is ending: {canary_ready} of {ready} ready pods "
                "still run it while production's pods become available"
            )
        else:
            split = share(achieved, asked, "the replicas router splits by pod count")
            message = f"{canary_ready} of {ready} ready pods run the canary: {split}"
        return Routing(objects=(stable,), canary_weight=achieved, message=message, why=why)
