"""Gateway API split: a Service per track and an HTTPRoute with weighted backendRefs.

The weight is exact whatever the replica counts, once the canary's pods are all available; until
then it is scaled by the share of them that is. Without spec.traffic.gatewayAPI.parentRefs the
route attaches to the stable Service itself (the GAMMA convention for service meshes); with them it
attaches to the named Gateways. The stable Service selects production pods, so clients that bypass
the mesh still reach a pinned, known version.

The route matches only what clients of the serving contract call (serving-image/README.md "HTTP"):
scoring, `POST /invocations`, and MLflow's health checks, `/ping` and `/health`. `/metrics` (model
names and versions, request counts), `/version`, `/ready` and `/live` are for the cluster
(Prometheus, the kubelet, the operator's canary analysis, which reach the pods directly), on the
model server's admin port, which no Service routes to; through a Gateway a request for them finds
no rule (404), and the serving port would answer 404 too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aliasroll.labels import LABEL_GATED, LABEL_OWNER
from aliasroll.planning import workloads
from aliasroll.planning.routers.base import Routing, TrafficInput, share
from aliasroll.planning.workloads import Manifest
from aliasroll.spec import RouterKind, Track

HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
#: The paths the route sends to the model, each matched exactly (Gateway API core support).
ROUTED_PATHS = ("/invocations", "/ping", "/health")


@dataclass(frozen=True)
class Backend:
    """One version's Service as a backend of the route (version mode), and its weight."""

    name: str
    selector: Mapping[str, str]
    weight: int


def _gated(owner: Any) -> dict[str, str]:
    return {LABEL_OWNER: owner.name, LABEL_GATED: "true"}


class GatewayAPIRouter:
    kind = RouterKind.GATEWAY_API

    def split(self, traffic: TrafficInput) -> Mapping[Track, int]:
        spec = traffic.spec
        if traffic.canary is None or spec.canary is None or spec.replicas == 0:
            # spec.replicas 0 is zero pods in every track: no canary pod either, whatever its share.
            return {Track.PRODUCTION: spec.replicas}
        # Production keeps every replica: the route, not the pod count, moves requests. The canary is
        # sized for its largest step, so stepping up moves only the route.
        canary = spec.canary.replicas or max(1, math.ceil(spec.replicas * spec.canary.peak_weight / 100))
        return {Track.PRODUCTION: spec.replicas, Track.CANARY: canary}

    def route(self, traffic: TrafficInput, replicas: Mapping[Track, int]) -> Routing:
        owner, spec = traffic.owner, traffic.spec
        tracks = [track for track in (Track.PRODUCTION, Track.CANARY) if track in replicas]
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
        asked = traffic.requested_weight
        wanted_canary = replicas.get(Track.CANARY, 0) if traffic.canary is not None else 0
        available = min(traffic.available(Track.CANARY), wanted_canary)
        # The canary's share grows with its available pods: 50% asked with 1 of 5 pods up is 10%.
        canary = math.floor(asked * available / wanted_canary) if wanted_canary else 0
        # A backend with no available pod gets no weight: its requests would find no endpoint.
        # Weights are relative, so its share goes to the other backend, as a Service spreads its
        # requests over the ready pods it has; with none anywhere, the route weights nothing.
        production = 100 - canary if traffic.available(Track.PRODUCTION) > 0 else 0
        weight = canary if production else (100 if canary else 0)  # the canary's share of requests
        routed = [Track.PRODUCTION] if traffic.canary is None else tracks
        weights = {Track.PRODUCTION: 100 - weight if production else 0, Track.CANARY: weight}
        objects.append(self._route(traffic, routed, weights))
        why = f"{available} of the canary's {wanted_canary} pods available" if wanted_canary else ""
        if not production:
            why = "production has no available pod" + (f"; {why}" if why else "")
        if traffic.canary is None:
            message = "all requests go to production"
            if Track.CANARY in replicas:
                message += "; the canary's pods go once production carries every request"
        else:
            message = f"the HTTPRoute sends the canary {share(weight, asked, why)}"
        if not production and not weight:
            message = "no pod is available: the HTTPRoute weights no backend"
        return Routing(objects=tuple(objects), canary_weight=weight, message=message, why=why)

    def route_versions(
        self, traffic: TrafficInput, backends: Sequence[Backend], canary_weight: int
    ) -> Routing:
        """Version mode (spec.rollback): a Service per routed version as the route's backends, each
        weighted by its share (planning/fleet.py gives a backend without an available pod none). The
        stable Service selects every gated pod of the resource: the readiness gate keeps warm
        versions out of it, so it reaches the versions the route weights (production, the canary, a
        version still leaving)."""
        owner, spec = traffic.owner, traffic.spec
        objects: list[Manifest] = [
            workloads.service(owner=owner, name=owner.name, selector=_gated(owner), spec=spec)
        ]
        objects += [
            workloads.service(owner=owner, name=backend.name, selector=dict(backend.selector), spec=spec)
            for backend in backends
        ]
        objects.append(self._route_to(traffic, [(backend.name, backend.weight) for backend in backends]))
        asked = traffic.requested_weight
        if not any(backend.weight for backend in backends):
            message = "no pod is available: the HTTPRoute weights no backend"
        elif traffic.canary is None:
            message = "all requests go to production"
        else:
            message = f"the HTTPRoute sends the canary {share(canary_weight, asked, '')}"
        return Routing(objects=tuple(objects), canary_weight=canary_weight, message=message)

    def _route(self, traffic: TrafficInput, tracks: list[Track], weights: Mapping[Track, int]) -> Manifest:
        return self._route_to(
            traffic, [(workloads.workload_name(traffic.owner, track), weights[track]) for track in tracks]
        )

    def _route_to(self, traffic: TrafficInput, backends: Sequence[tuple[str, int]]) -> Manifest:
        owner, gateway = traffic.owner, traffic.spec.traffic
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
                    "matches": [{"path": {"type": "Exact", "value": path}} for path in ROUTED_PATHS],
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": name,
                            "port": workloads.SERVICE_PORT,
                            "weight": weight,
                        }
                        for name, weight in backends
                    ],
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
