"""Router contract: every router obeys the same rules; then each router's own split, by named case."""

from __future__ import annotations

from typing import Any

import pytest
from builders import OWNER, canary_spec, observed, workload

from aliasroll.planning.state import ObservedState, ServedVersion
from aliasroll.routers import ROUTERS, TrafficInput, TrafficRouter
from aliasroll.spec import RouterKind, Track

P, C = Track.PRODUCTION, Track.CANARY
V2 = ServedVersion(model="sentiment", version="2")
V3 = ServedVersion(model="sentiment", version="3")


def traffic(
    kind: RouterKind,
    *,
    weight: int = 20,
    replicas: int = 10,
    canary: ServedVersion | None = V3,
    state: ObservedState | None = None,
) -> TrafficInput:
    return TrafficInput(
        owner=OWNER,
        spec=canary_spec(weight, replicas=replicas, router=kind.value),
        production=V2,
        canary=canary,
        observed=state or observed(),
    )


ROUTER_IDS = [kind.value for kind in ROUTERS]


@pytest.fixture(params=list(ROUTERS.values()), ids=ROUTER_IDS)
def router(request: pytest.FixtureRequest) -> TrafficRouter:
    return request.param  # type: ignore[no-any-return]


# The contract.


def test_no_canary_means_every_request_to_production(router: TrafficRouter) -> None:
    plan = router.plan(traffic(router.kind, canary=None))
    assert plan.replicas == {P: 10}
    assert plan.canary_weight == 0


def test_no_traffic_to_a_canary_without_available_replicas(router: TrafficRouter) -> None:
    state = observed(
        workload(P, "2", replicas=10), workload(C, "3", replicas=2, available=0, rolled_out=False)
    )
    plan = router.plan(traffic(router.kind, state=state))
    assert plan.canary_weight == 0
    assert plan.replicas[C] >= 1, "the canary is still started"


def test_production_keeps_full_capacity_until_canary_is_available(router: TrafficRouter) -> None:
    plan = router.plan(traffic(router.kind, state=observed(workload(P, "2", replicas=10))))
    assert plan.replicas[P] == 10


def test_available_canary_gets_about_the_asked_share(router: TrafficRouter) -> None:
    state = observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2))
    plan = router.plan(traffic(router.kind, state=state))
    assert plan.canary_weight == 20
    assert "20%" in plan.message


def test_stable_service_named_after_the_resource(router: TrafficRouter) -> None:
    plan = router.plan(traffic(router.kind))
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in plan.objects}
    assert ("Service", "sentiment") in names


def test_routing_objects_are_owned(router: TrafficRouter) -> None:
    for obj in router.plan(traffic(router.kind)).objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert obj["metadata"]["namespace"] == OWNER.namespace


# Replica-ratio split.

REPLICA_CASES = [
    # (name, total, weight, canary available, production available) -> (production, canary, achieved %)
    ("20% of 10, canary up", 10, 20, 2, 8, (8, 2, 20)),
    ("20% of 10, canary starting", 10, 20, 0, 10, (10, 2, 0)),
    ("50% of 2", 2, 50, 1, 1, (1, 1, 50)),
    ("20% of 1: one pod each, 50% achieved", 1, 20, 1, 1, (1, 1, 50)),
    ("1% of 10 rounds up to one pod", 10, 1, 1, 9, (9, 1, 10)),
    ("100% moves everything to the canary", 4, 100, 4, 0, (0, 4, 100)),
]


@pytest.mark.parametrize(
    ("name", "total", "weight", "canary_up", "production_up", "expected"),
    REPLICA_CASES,
    ids=[case[0] for case in REPLICA_CASES],
)
def test_replica_split(
    name: str, total: int, weight: int, canary_up: int, production_up: int, expected: tuple[int, int, int]
) -> None:
    state = observed(
        workload(P, "2", replicas=production_up, available=production_up),
        workload(C, "3", replicas=canary_up, available=canary_up),
    )
    plan = ROUTERS[RouterKind.REPLICAS].plan(
        traffic(RouterKind.REPLICAS, weight=weight, replicas=total, state=state)
    )
    assert (plan.replicas[P], plan.replicas[C], plan.canary_weight) == expected


def test_replica_router_one_service_selects_both_tracks() -> None:
    (service,) = ROUTERS[RouterKind.REPLICAS].plan(traffic(RouterKind.REPLICAS)).objects
    assert service["spec"]["selector"] == {"aliasroll.io/modeldeployment": "sentiment"}


# Gateway API split.


def route(plan_objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return next(obj for obj in plan_objects if obj["kind"] == "HTTPRoute")


def test_gateway_route_weights_follow_the_spec_exactly() -> None:
    state = observed(workload(P, "2", replicas=10), workload(C, "3", replicas=1))
    plan = ROUTERS[RouterKind.GATEWAY_API].plan(traffic(RouterKind.GATEWAY_API, weight=7, state=state))
    backends = route(plan.objects)["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [
        ("sentiment-production", 93),
        ("sentiment-canary", 7),
    ]
    assert plan.replicas == {P: 10, C: 1}


def test_gateway_route_attaches_to_the_stable_service_by_default() -> None:
    plan = ROUTERS[RouterKind.GATEWAY_API].plan(traffic(RouterKind.GATEWAY_API))
    assert route(plan.objects)["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "sentiment", "port": 80}
    ]


def test_gateway_track_services_select_one_track_each() -> None:
    plan = ROUTERS[RouterKind.GATEWAY_API].plan(traffic(RouterKind.GATEWAY_API))
    selectors = {
        obj["metadata"]["name"]: obj["spec"]["selector"] for obj in plan.objects if obj["kind"] == "Service"
    }
    assert selectors["sentiment-canary"] == {
        "aliasroll.io/modeldeployment": "sentiment",
        "aliasroll.io/track": "canary",
    }
    assert selectors["sentiment"] == selectors["sentiment-production"]
