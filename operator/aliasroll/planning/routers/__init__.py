"""Traffic routers: each turns (spec, versions, observed pods) into a target split and routing objects.

Routers only compute desired objects; the one applier writes them. Add a router by implementing
`TrafficRouter` and registering it in ROUTERS; the contract tests run over every entry.
"""

from aliasroll.planning.routers.base import Routing, TrafficInput, TrafficRouter, share
from aliasroll.planning.routers.gateway_api import GatewayAPIRouter
from aliasroll.planning.routers.replicas import ReplicaRatioRouter
from aliasroll.spec import RouterKind

ROUTERS: dict[RouterKind, TrafficRouter] = {
    RouterKind.REPLICAS: ReplicaRatioRouter(),
    RouterKind.GATEWAY_API: GatewayAPIRouter(),
}


def router_for(kind: RouterKind) -> TrafficRouter:
    return ROUTERS[kind]


__all__ = ["ROUTERS", "Routing", "TrafficInput", "TrafficRouter", "router_for", "share"]
