"""Version mode (spec.rollback) through the planner: a Deployment per version, routed by the gate.

Each test drives a small cluster (version_cluster.py) pass by pass, as the reconciler would: the
plan's Deployments, prunes and gate writes are applied, pods start when the test says, and the next
pass reads it all back. The capacity promise is checked after every pass once the first version
serves: Ready pods never fall below spec.replicas.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from builders import spec, view
from version_cluster import VersionCluster

from aliasroll import reasons
from aliasroll.planning.planner import Plan
from aliasroll.spec import ModelDeploymentSpec, RollbackSpec, Track

REPLICAS = 3


def rollback_spec(window: int = 1800, *, floor: int | None = None, max_warm: int = 1) -> ModelDeploymentSpec:
    return replace(
        spec(replicas=REPLICAS),
        rollback=RollbackSpec(window_seconds=window, max_warm=max_warm, floor=floor),
    )


def converge(
    cluster: VersionCluster, the_spec: ModelDeploymentSpec, production: str, passes: int = 8
) -> Plan:
    """Passes with every pod starting at once, until nothing changes; capacity checked at each."""
    result = cluster.reconcile(the_spec, view(production))
    served = False
    for _ in range(passes):
        cluster.start()
        result = cluster.reconcile(the_spec, view(production))
        total = sum(cluster.serving().values())
        assert total >= REPLICAS or not served  # once a version served, capacity never drops
        served = served or total >= REPLICAS
    return result


def serving_from(cluster: VersionCluster) -> set[str]:
    return set(cluster.serving())


def test_a_first_deploy_runs_one_deployment_per_version_with_the_gate() -> None:
    cluster = VersionCluster()
    first = cluster.reconcile(rollback_spec(), view("1"))
    deployment = next(obj for obj in first.objects if obj["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == "sentiment-v1"
    assert deployment["metadata"]["labels"]["aliasroll.io/role"] == "production"
    pod = deployment["spec"]["template"]
    assert pod["spec"]["readinessGates"] == [{"conditionType": "aliasroll.io/routed"}]
    assert "aliasroll.io/track" not in pod["metadata"]["labels"]
    assert all(env["name"] != "ALIASROLL_TRACK" for env in pod["spec"]["containers"][0]["env"])
    assert deployment["spec"]["replicas"] == REPLICAS
    # The next pass routes the new pods; they take requests once their probe passes.
    cluster.start()
    cluster.reconcile(rollback_spec(), view("1"))
    assert cluster.serving() == {"1": REPLICAS}
    assert cluster.status["production"]["version"] == "1"
    assert "warm" not in cluster.status


def test_a_version_that_leaves_production_stays_warm_and_unrouted() -> None:
    cluster = VersionCluster()
    converge(cluster, rollback_spec(), "1")
    v1_pods = cluster.pods_of("1")
    moved = cluster.reconcile(rollback_spec(), view("2"))
    assert {obj["metadata"]["name"] for obj in moved.objects if obj["kind"] == "Deployment"} == {
        "sentiment-v1",
        "sentiment-v2",
    }
    assert serving_from(cluster) == {"1"}  # v2's pods are starting: v1 keeps every request
    converge(cluster, rollback_spec(), "2")
    assert serving_from(cluster) == {"2"}
    assert cluster.pods_of("1") == v1_pods  # warm: the same pods, not routed
    (warm,) = cluster.status["warm"]
    assert (warm["version"], warm["replicas"], warm["routed"]) == ("1", REPLICAS, False)
    assert warm["until"] > warm["since"]


def test_a_rollback_to_a_warm_version_only_routes_it_and_says_how_long() -> None:
    cluster = VersionCluster()
    converge(cluster, rollback_spec(), "1")
    converge(cluster, rollback_spec(), "2")
    v1_pods, v2_pods = cluster.pods_of("1"), cluster.pods_of("2")
    cluster.later(60)
    back = cluster.reconcile(rollback_spec(), view("1"))
    assert not [
        obj
        for obj in back.objects
        if obj["metadata"]["name"] not in ("sentiment-v1", "sentiment-v2", "sentiment")
        and obj["kind"] == "Deployment"
    ]
    assert serving_from(cluster) == {"1", "2"}  # gates set: v1's pods Ready at once (warm)
    assert cluster.status["fastSwitch"]["kind"] == "rollback"
    cluster.later(1)
    cluster.reconcile(rollback_spec(), view("1"))
    assert serving_from(cluster) == {"1"}
    assert cluster.pods_of("1") == v1_pods
    assert cluster.pods_of("2") == v2_pods
    assert "fastSwitch" not in cluster.status
    fast = [message for reason, message in cluster.events if reason == reasons.FAST_ROLLBACK]
    assert len(fast) == 1
    assert "moved back to version 1" in fast[0]
    assert "1.0 s" in fast[0]
    assert [w["version"] for w in cluster.status["warm"]] == ["2"]


def test_a_fast_move_is_timed_to_the_millisecond() -> None:
    """A rollback to a warm version takes about a second: counted in whole seconds (as status keeps
    other times) it read "0.0 s" or "1.0 s" on the real node whatever it took."""
    cluster = VersionCluster()
    converge(cluster, rollback_spec(), "1")
    converge(cluster, rollback_spec(), "2")
    cluster.later(60.7)
    started = cluster.reconcile(rollback_spec(), view("1"))
    assert cluster.status["fastSwitch"]["since"].endswith(".700Z")
    assert started.fast_move is None, "under way, not ended"
    cluster.later(0.55)  # same second, by the clock's whole seconds
    ended = cluster.reconcile(rollback_spec(), view("1"))
    assert "fastSwitch" not in cluster.status
    # The plan says so, for the operator's metric aliasroll_fast_switch_seconds.
    assert ended.fast_move is not None
    assert (ended.fast_move.kind.value, ended.fast_move.target.version) == ("rollback", "1")
    assert ended.fast_move.seconds == pytest.approx(0.55)
    fast = [message for reason, message in cluster.events if reason == reasons.FAST_ROLLBACK]
    assert len(fast) == 1
    assert "the only version routed 0.6 s after the move was seen" in fast[0]


def test_a_warm_version_at_its_floor_scales_up_in_parallel_before_the_other_leaves() -> None:
    cluster = VersionCluster()
    the_spec = rollback_spec(floor=1)
    converge(cluster, the_spec, "1")
    converge(cluster, the_spec, "2")
    assert cluster.deployments["sentiment-v1"].replicas == 1
    cluster.reconcile(the_spec, view("1"))
    assert cluster.deployments["sentiment-v1"].replicas == REPLICAS  # all its pods at once
    assert cluster.serving() == {"1": 1, "2": REPLICAS}
    cluster.reconcile(the_spec, view("1"))
    # v2 gives up only what v1's Ready pods carry: requests keep every pod asked for.
    assert cluster.serving() == {"1": 1, "2": REPLICAS - 1}
    cluster.start(1)
    cluster.reconcile(the_spec, view("1"))
    assert sum(cluster.serving().values()) >= REPLICAS
    cluster.start()
    cluster.reconcile(the_spec, view("1"))
    cluster.reconcile(the_spec, view("1"))
    assert cluster.serving() == {"1": REPLICAS}
    assert cluster.deployments["sentiment-v2"].replicas == 1


def test_a_warm_version_goes_when_its_window_ends() -> None:
    cluster = VersionCluster()
    converge(cluster, rollback_spec(window=600), "1")
    result = converge(cluster, rollback_spec(window=600), "2")
    assert result.next_in is not None
    assert result.next_in <= 600
    cluster.later(601)
    cluster.reconcile(rollback_spec(window=600), view("2"))
    assert set(cluster.deployments) == {"sentiment-v2"}
    assert "warm" not in cluster.status


def test_window_zero_keeps_nothing_warm() -> None:
    cluster = VersionCluster()
    converge(cluster, rollback_spec(window=0), "1")
    converge(cluster, rollback_spec(window=0), "2")
    assert set(cluster.deployments) == {"sentiment-v2"}


def test_track_deployments_from_before_keep_serving_until_the_versions_carry_every_pod() -> None:
    cluster = VersionCluster()
    cluster.legacy_track(Track.PRODUCTION, "1", REPLICAS)
    cluster.status = {
        "production": {"version": "1", "modelUri": "models:/sentiment/1", "since": "2026-11-23T11:00:00Z"}
    }
    cluster.reconcile(rollback_spec(), view("1"))
    assert set(cluster.deployments) == {"sentiment-production", "sentiment-v1"}
    assert cluster.serving() == {"1": REPLICAS}
    cluster.start(1)
    cluster.reconcile(rollback_spec(), view("1"))
    cluster.reconcile(rollback_spec(), view("1"))
    assert sum(cluster.serving().values()) >= REPLICAS
    cluster.start()
    cluster.reconcile(rollback_spec(), view("1"))
    cluster.reconcile(rollback_spec(), view("1"))
    assert set(cluster.deployments) == {"sentiment-v1"}
    assert cluster.serving() == {"1": REPLICAS}


def test_at_most_max_warm_versions_stay() -> None:
    cluster = VersionCluster()
    the_spec = rollback_spec(max_warm=2)
    for version in ("1", "2", "3", "4"):
        converge(cluster, the_spec, version)
        cluster.later(10)
    assert set(cluster.deployments) == {"sentiment-v2", "sentiment-v3", "sentiment-v4"}
    assert [w["version"] for w in cluster.status["warm"]] == ["3", "2"]


def canary_rollback_spec(weight: int) -> ModelDeploymentSpec:
    return replace(
        spec(replicas=REPLICAS, canary={"alias": "canary", "weight": weight}),
        rollback=RollbackSpec(window_seconds=1800),
    )


def test_a_promotion_gives_production_to_the_canary_pods_at_once() -> None:
    cluster = VersionCluster()
    the_spec = canary_rollback_spec(34)
    converge(cluster, the_spec, "1")
    for _ in range(4):
        cluster.reconcile(the_spec, view("1", "2"))
        cluster.start()
    cluster.reconcile(the_spec, view("1", "2"))
    assert cluster.serving() == {"1": 2, "2": 1}
    assert cluster.status["canary"]["version"] == "2"
    canary_pods = cluster.pods_of("2")
    # A human promotes: @production names the canary's version.
    cluster.reconcile(the_spec, view("2", "2"))
    assert cluster.deployments["sentiment-v2"].replicas == REPLICAS  # its other pods start at once
    assert canary_pods <= cluster.pods_of("2")
    assert cluster.status["production"]["version"] == "2"
    assert cluster.status["fastSwitch"]["kind"] == "promotion"
    cluster.start()
    cluster.reconcile(the_spec, view("2", "2"))
    cluster.reconcile(the_spec, view("2", "2"))
    assert cluster.serving() == {"2": REPLICAS}
    assert [w["version"] for w in cluster.status["warm"]] == ["1"]
    assert any(
        "promoted to version 2" in message for reason, message in cluster.events if reason == "FastRollback"
    )
    # ... and regret is instant: version 1 is warm.
    before = cluster.pods_of("1")
    cluster.reconcile(the_spec, view("1", "2"))
    cluster.reconcile(the_spec, view("1", "2"))
    # (no pod created: with @canary still naming 2, production's side is 2 pods of the 3)
    assert cluster.pods_of("1") <= before
    assert cluster.serving() == {"1": 2, "2": 1}


def gateway_rollback_spec() -> ModelDeploymentSpec:
    return replace(
        spec(replicas=REPLICAS, traffic={"router": "gatewayAPI"}),
        rollback=RollbackSpec(window_seconds=1800),
    )


def route_weights(result: Plan) -> dict[str, int]:
    route = next(obj for obj in result.objects if obj["kind"] == "HTTPRoute")
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_the_gateway_api_router_weights_a_service_per_routed_version() -> None:
    cluster = VersionCluster()
    the_spec = gateway_rollback_spec()
    first = converge(cluster, the_spec, "1")
    assert route_weights(first) == {"sentiment-v1": 100}
    services = {obj["metadata"]["name"]: obj for obj in first.objects if obj["kind"] == "Service"}
    assert services["sentiment-v1"]["spec"]["selector"] == {
        "aliasroll.io/modeldeployment": "sentiment",
        "aliasroll.io/workload": "sentiment-v1",
    }
    # The stable Service reaches the gated pods: the gate keeps warm ones out of it.
    assert services["sentiment"]["spec"]["selector"] == {
        "aliasroll.io/modeldeployment": "sentiment",
        "aliasroll.io/gated": "true",
    }
    moving = cluster.reconcile(the_spec, view("2"))
    assert route_weights(moving) == {"sentiment-v1": 100, "sentiment-v2": 0}  # v2 has no pod up yet
    moved = converge(cluster, the_spec, "2")
    assert route_weights(moved) == {"sentiment-v2": 100}  # warm v1 is no backend
    cluster.later(30)
    back = cluster.reconcile(the_spec, view("1"))
    # The gates are set; v1's pods are Ready a moment later, and the next pass weights them.
    assert route_weights(back) == {"sentiment-v1": 0, "sentiment-v2": 100}
    assert cluster.pods_of("1") == {pod.name for pod in cluster.deployments["sentiment-v1"].pods}
    assert route_weights(cluster.reconcile(the_spec, view("1"))) == {"sentiment-v1": 100}


def test_a_leaving_version_leaves_the_endpoints_pod_by_pod_and_keeps_its_pods() -> None:
    """As each pod of the new version becomes Ready one pod of the old one is unrouted (its gate),
    not deleted: the last of the old version's pods leaves with the last of the new one's arrivals,
    and every pod stays for the version to be warm."""
    cluster = VersionCluster()
    converge(cluster, rollback_spec(), "1")
    v1_pods = cluster.pods_of("1")
    cluster.reconcile(rollback_spec(), view("2"))
    for started in range(1, REPLICAS + 1):
        cluster.start(1)
        cluster.reconcile(rollback_spec(), view("2"))  # routes the new pod
        cluster.reconcile(rollback_spec(), view("2"))  # sees it Ready: one of v1's leaves
        assert cluster.serving() == ({"1": REPLICAS - started} if started < REPLICAS else {}) | {"2": started}
        assert cluster.pods_of("1") == v1_pods
