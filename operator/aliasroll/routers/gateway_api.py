"""Gateway API split: a Service per track and an HTTPRoute with weighted backendRefs.

The weight is exact whatever the replica counts. Without spec.traffic.gatewayAPI.parentRefs the
route attaches to the stable Service itself (the GAMMA convention for service meshes); with them it
attaches to the named Gateways. The stable Service selects production pods, so clients that bypass
the mesh still reach a pinned, known version.
"""

from __future__ import annotations

import math
from typing import Any

from aliasroll.planning import workloads
from aliasroll.planning.workloads import Manifest
from aliasroll.routers.base import TrafficInput, TrafficPlan
from aliasroll.spec import RouterKind, Track

HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"


class GatewayAPIRouter:
    kind = RouterKind.GATEWAY_API

    def plan(self, traffic: TrafficInput) -> TrafficPlan:
        owner, spec = traffic.owner, traffic.spec
        total = spec.replicas
        tracks = [Track.PRODUCTION] if traffic.canary is None else [Track.PRODUCTION, Track.CANARY]
        objects: list[Manifest] = [
            workloads.service(
                owner=owner,
                name=owner.name,
                selector=workloads.track_selector(owner, Track.PRODUCTION),
                spec=spec,
            )
        ]
        objects += [
            workloads.service(
                owner=owner,
                name=workloads.workload_name(owner, track),
                selector=workloads.track_selector(owner, track),
                spec=spec,
            )
            for track in tracks
        ]
        replicas = {Track.PRODUCTION: total}
        weight = 0
        if traffic.canary is not None and spec.canary is not None:
            replicas[Track.CANARY] = spec.canary.replicas or max(
                1, math.ceil(total * spec.canary.weight / 100)
            )
            # A canary with no available replica gets no requests, whatever was asked.
            weight = spec.canary.weight if traffic.available(Track.CANARY) > 0 else 0
        objects.append(self._route(traffic, tracks, weight))
        if traffic.canary is None:
            message = "all requests go to production"
        elif weight == traffic.requested_weight:
            message = f"the HTTPRoute sends {weight}% of requests to the canary"
        else:
            message = (
                f"the HTTPRoute sends no requests to the canary until one of its pods is available "
                f"(asked {traffic.requested_weight}%)"
            )
        return TrafficPlan(replicas=replicas, objects=tuple(objects), canary_weight=weight, message=message)

    def _route(self, traffic: TrafficInput, tracks: list[Track], canary_weight: int) -> Manifest:
        owner, gateway = traffic.owner, traffic.spec.traffic
        weights = {Track.PRODUCTION: 100 - canary_weight, Track.CANARY: canary_weight}
        parent_refs: list[dict[str, Any]] = [
            {
                key: value
                for key, value in {
                    "group": ref.group,
                    "kind": ref.kind,
                    "name": ref.name,
                    "namespace": ref.namespace,
                    "sectionName": ref.section_name,
                    "port": ref.port,
                }.items()
                if value is not None
            }
            for ref in gateway.parent_refs
        ] or [{"group": "", "kind": "Service", "name": owner.name, "port": workloads.SERVICE_PORT}]
        route_spec: dict[str, Any] = {
            "parentRefs": parent_refs,
            "rules": [
                {
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": workloads.workload_name(owner, track),
                            "port": workloads.SERVICE_PORT,
                            "weight": weights[track],
                        }
                        for track in tracks
                    ]
                }
            ],
        }
        if gateway.hostnames:
            route_spec["hostnames"] = list(gateway.hostnames)
        return {
            "apiVersion": HTTPROUTE_API_VERSION,
            "kind": "HTTPRoute",
            "metadata": workloads.metadata(owner, owner.name, workloads.common_labels(owner)),
            "spec": route_spec,
        }
