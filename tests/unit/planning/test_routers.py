"""Router contract: every router obeys the same rules; then each router's own split, by named case."""

from __future__ import annotations

from typing import Any

import pytest
from builders import OWNER, canary_spec, observed, workload

from aliasroll.planning.observed import ObservedTrack, serving
from aliasroll.planning.routers import ROUTERS, Routing, TrafficInput, TrafficRouter
from aliasroll.planning.state import ObservedState, ServedVersion
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


def plan(router: TrafficRouter, traffic_input: TrafficInput) -> tuple[dict[Track, int], Routing]:
    """The router's final split, and its routing when each track runs what the split asks."""
    split = dict(router.split(traffic_input))
    return split, router.route(traffic_input, split)


# The contract.


def test_no_canary_means_every_request_to_production(router: TrafficRouter) -> None:
    split, routing = plan(router, traffic(router.kind, canary=None))
    assert split == {P: 10}
    assert routing.canary_weight == 0


def test_no_traffic_to_a_canary_without_available_replicas(router: TrafficRouter) -> None:
    state = observed(
        workload(P, "2", replicas=10), workload(C, "3", replicas=2, available=0, rolled_out=False)
    )
    split, routing = plan(router, traffic(router.kind, state=state))
    assert routing.canary_weight == 0
    assert split[C] >= 1, "the canary is still started"


@pytest.mark.parametrize("weight", [5, 20, 25, 50])
@pytest.mark.parametrize("total", [2, 4, 5, 10])
def test_the_message_states_the_share_in_place_and_the_one_asked_where_they_differ(
    router: TrafficRouter, weight: int, total: int
) -> None:
    wanted = dict(router.split(traffic(router.kind, weight=weight, replicas=total)))
    for canary_up in range(wanted[C] + 1):
        state = observed(
            workload(P, "2", replicas=wanted[P]),
            workload(C, "3", replicas=wanted[C], available=canary_up, rolled_out=canary_up == wanted[C]),
        )
        routing = router.route(traffic(router.kind, weight=weight, replicas=total, state=state), wanted)
        assert f"{routing.canary_weight}% of requests" in routing.message
        if routing.canary_weight != weight:
            assert f"({weight}% requested; " in routing.message
            assert routing.why, "what makes the share in place differ is said"
        else:
            assert "requested" not in routing.message


@pytest.mark.parametrize("weight", [1, 5, 20, 50, 99, 100])
@pytest.mark.parametrize("total", [1, 2, 5, 10])
def test_the_canary_never_gets_more_than_its_available_pods_carry(
    router: TrafficRouter, weight: int, total: int
) -> None:
    """Whatever share is asked, the canary's weight never exceeds the share of its pods that are up."""
    wanted = dict(router.split(traffic(router.kind, weight=weight, replicas=total)))
    for canary_up in range(wanted[C] + 1):
        state = observed(
            workload(P, "2", replicas=wanted[P]),
            workload(C, "3", replicas=wanted[C], available=canary_up, rolled_out=canary_up == wanted[C]),
        )
        routing = router.route(traffic(router.kind, weight=weight, replicas=total, state=state), wanted)
        assert (
            routing.canary_weight <= weight * canary_up / wanted[C] + 1e-9
            or router.kind is RouterKind.REPLICAS
        )
        assert routing.canary_weight <= round(100 * canary_up / max(1, canary_up + wanted[P])) or (
            router.kind is RouterKind.GATEWAY_API
        )
        if canary_up == 0:
            assert routing.canary_weight == 0


def test_available_canary_gets_about_the_asked_share(router: TrafficRouter) -> None:
    state = observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2))
    _, routing = plan(router, traffic(router.kind, state=state))
    assert routing.canary_weight == 20
    assert "20%" in routing.message


def test_replicas_0_runs_no_pod_in_any_track(router: TrafficRouter) -> None:
    """spec.replicas 0 (kubectl scale, KEDA's scale to zero) is zero pods in every track, a canary
    wanted or not, whatever its share."""
    for weight in (1, 20, 100):
        split, routing = plan(router, traffic(router.kind, weight=weight, replicas=0))
        assert not any(split.values()), split
        assert routing.canary_weight == 0


def request_shares(routing: Routing, state: ObservedState) -> dict[Track, float]:
    """Where requests go, in percent: a gateway's route weights are relative; the replicas router's
    one Service spreads requests over the ready pods it selects."""
    if any(obj["kind"] == "HTTPRoute" for obj in routing.objects):
        weights = {Track(name.removeprefix("sentiment-")): weight for name, weight in backends(routing)}
        total = sum(weights.values())
        return {track: 100 * weights.get(track, 0) / total if total else 0 for track in (P, C)}
    ready = {track: serving(state.workloads.get(track)) for track in (P, C)}
    total = sum(ready.values())
    return {track: 100 * ready[track] / total if total else 0 for track in (P, C)}


def pods(track: Track, version: str, *, of_version: int, serving_pods: int, replicas: int) -> ObservedTrack:
    """A track whose Deployment pins `version`: `of_version` of its available pods run it, and
    `serving_pods` are available in all (the previous version's serve beside them while it rolls)."""
    return ObservedTrack(
        name=f"sentiment-{track.value}",
        track=track,
        model="sentiment",
        version=version,
        replicas=replicas,
        available=of_version,
        rolled_out=of_version == serving_pods == replicas,
        serving=serving_pods,
    )


NO_EMPTY_BACKEND = [
    # (spec.replicas, the tracks' pods), named for the case: requests go only where pods are
    pytest.param(
        0,
        observed(workload(P, "2", replicas=0)),
        id="replicas-0-with-a-canary-no-request-anywhere",
    ),
    pytest.param(10, observed(), id="first-start-no-pod-yet-no-request-anywhere"),
    pytest.param(
        10,
        observed(workload(P, "2", replicas=8, available=0), workload(C, "3", replicas=2)),
        id="production-has-no-available-pod-the-canary-has",
    ),
    pytest.param(
        10,
        observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2, available=0, rolled_out=False)),
        id="the-canary-has-no-available-pod",
    ),
    pytest.param(
        10,
        observed(workload(P, "2", replicas=8, available=0), workload(C, "3", replicas=2, available=0)),
        id="no-track-has-an-available-pod",
    ),
    pytest.param(
        10,
        ObservedState(
            workloads={
                P: pods(P, "2", of_version=0, serving_pods=8, replicas=8),
                C: pods(C, "3", of_version=2, serving_pods=2, replicas=2),
            }
        ),
        id="production-rolls-its-previous-versions-pods-serve",
    ),
]


@pytest.mark.parametrize(("total", "state"), NO_EMPTY_BACKEND)
def test_no_request_goes_to_a_track_without_available_pods(
    router: TrafficRouter, total: int, state: ObservedState
) -> None:
    """No backend with no available pod is weighted; the canary's share in status is the share of
    requests it really gets."""
    the_traffic = traffic(router.kind, replicas=total, state=state)
    split = dict(router.split(the_traffic))
    routing = router.route(the_traffic, split)
    shares = request_shares(routing, state)
    for track in (P, C):
        if serving(state.workloads.get(track)) == 0 or split.get(track, 0) == 0:
            assert shares[track] == 0, (track, shares)
    assert routing.canary_weight == round(shares[C]), (routing.canary_weight, shares)
    if serving(state.workloads.get(P)) and split.get(P):
        assert shares[P] > 0, "a track whose pods serve, whatever version, keeps its requests"


def test_stable_service_named_after_the_resource(router: TrafficRouter) -> None:
    _, routing = plan(router, traffic(router.kind))
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in routing.objects}
    assert ("Service", "sentiment") in names


def test_routing_objects_are_owned(router: TrafficRouter) -> None:
    for obj in plan(router, traffic(router.kind))[1].objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert obj["metadata"]["namespace"] == OWNER.namespace


# Replica-ratio split.

REPLICA_CASES = [
    # (name, total, weight) -> (production, canary) once the split is in place
    ("20% of 10", 10, 20, (8, 2)),
    ("50% of 2", 2, 50, (1, 1)),
    ("20% of 1: one pod each", 1, 20, (1, 1)),
    ("1% of 10 rounds up to one pod", 10, 1, (9, 1)),
    ("99% of 10 keeps one production pod", 10, 99, (1, 9)),
    ("100% moves everything to the canary", 4, 100, (0, 4)),
]


@pytest.mark.parametrize(
    ("name", "total", "weight", "expected"), REPLICA_CASES, ids=[case[0] for case in REPLICA_CASES]
)
def test_replica_split(name: str, total: int, weight: int, expected: tuple[int, int]) -> None:
    split = ROUTERS[RouterKind.REPLICAS].split(traffic(RouterKind.REPLICAS, weight=weight, replicas=total))
    assert (split[P], split[C]) == expected


def test_replica_router_reports_the_share_its_ready_pods_give() -> None:
    state = observed(workload(P, "2", replicas=1, available=1), workload(C, "3", replicas=1))
    routing = ROUTERS[RouterKind.REPLICAS].route(
        traffic(RouterKind.REPLICAS, weight=20, replicas=1, state=state), {P: 1, C: 1}
    )
    assert routing.canary_weight == 50
    assert routing.message == (
        "1 of 2 ready pods run the canary: "
        "50% of requests (20% requested; the replicas router splits by pod count)"
    )
    assert routing.why == "1 of 2 ready pods run the canary"


def test_replica_router_one_service_selects_both_tracks() -> None:
    (service,) = plan(ROUTERS[RouterKind.REPLICAS], traffic(RouterKind.REPLICAS))[1].objects
    assert service["spec"]["selector"] == {"aliasroll.io/modeldeployment": "sentiment"}


# Gateway API split.


def route(plan_objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return next(obj for obj in plan_objects if obj["kind"] == "HTTPRoute")


def backends(routing: Routing) -> list[tuple[str, int]]:
    return [(b["name"], b["weight"]) for b in route(routing.objects)["spec"]["rules"][0]["backendRefs"]]


def test_gateway_route_weights_follow_the_spec_exactly() -> None:
    state = observed(workload(P, "2", replicas=10), workload(C, "3", replicas=1))
    split, routing = plan(
        ROUTERS[RouterKind.GATEWAY_API], traffic(RouterKind.GATEWAY_API, weight=7, state=state)
    )
    assert backends(routing) == [("sentiment-production", 93), ("sentiment-canary", 7)]
    assert split == {P: 10, C: 1}


GATEWAY_ROLLOUT = [
    # (name, canary pods available of 5 wanted) -> canary weight, asked 50%
    ("no canary pod yet", 0, 0),
    ("1 of 5 canary pods: a fifth of the asked share", 1, 10),
    ("3 of 5", 3, 30),
    ("all 5: the asked share", 5, 50),
]


@pytest.mark.parametrize(("name", "up", "weight"), GATEWAY_ROLLOUT, ids=[case[0] for case in GATEWAY_ROLLOUT])
def test_gateway_weight_grows_with_the_canarys_available_pods(name: str, up: int, weight: int) -> None:
    state = observed(
        workload(P, "2", replicas=10), workload(C, "3", replicas=5, available=up, rolled_out=up == 5)
    )
    _, routing = plan(
        ROUTERS[RouterKind.GATEWAY_API], traffic(RouterKind.GATEWAY_API, weight=50, state=state)
    )
    assert routing.canary_weight == weight
    assert backends(routing) == [("sentiment-production", 100 - weight), ("sentiment-canary", weight)]


def test_gateway_draining_canary_gets_no_requests() -> None:
    state = observed(workload(P, "2", replicas=10), workload(C, "3", replicas=1))
    routing = ROUTERS[RouterKind.GATEWAY_API].route(
        traffic(RouterKind.GATEWAY_API, canary=None, state=state), {P: 10, C: 1}
    )
    assert backends(routing) == [("sentiment-production", 100)]
    assert routing.canary_weight == 0


def test_gateway_route_attaches_to_the_stable_service_by_default() -> None:
    _, routing = plan(ROUTERS[RouterKind.GATEWAY_API], traffic(RouterKind.GATEWAY_API))
    assert route(routing.objects)["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "sentiment", "port": 80}
    ]


def test_gateway_route_matches_only_the_paths_clients_call() -> None:
    # /metrics (model names, versions, counts), /version, /ready and /live are the cluster's: a Gateway
    # that serves the route answers them 404, whatever the weights.
    _, routing = plan(ROUTERS[RouterKind.GATEWAY_API], traffic(RouterKind.GATEWAY_API))
    [rule] = route(routing.objects)["spec"]["rules"]
    assert rule["matches"] == [
        {"path": {"type": "Exact", "value": "/invocations"}},
        {"path": {"type": "Exact", "value": "/ping"}},
        {"path": {"type": "Exact", "value": "/health"}},
    ]
    paths = {match["path"]["value"] for match in rule["matches"]}
    assert not paths & {"/metrics", "/version", "/ready", "/live", "/"}


def test_gateway_track_services_select_one_track_each() -> None:
    _, routing = plan(ROUTERS[RouterKind.GATEWAY_API], traffic(RouterKind.GATEWAY_API))
    selectors = {
        obj["metadata"]["name"]: obj["spec"]["selector"]
        for obj in routing.objects
        if obj["kind"] == "Service"
    }
    assert selectors["sentiment-canary"] == {
        "aliasroll.io/modeldeployment": "sentiment",
        "aliasroll.io/track": "canary",
    }
    assert selectors["sentiment"] == selectors["sentiment-production"]
