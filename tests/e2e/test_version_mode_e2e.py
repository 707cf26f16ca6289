"""Version mode (spec.rollback) against the real API server, with the operator running: a Deployment
per version, the readiness gate set on the pods the operator owns, a version kept warm after it
leaves @production, and a move back to it that creates no pod (kwok's pods honour readiness gates as
a kubelet does: tests/e2e/test_kwok_readiness_gates.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from examples.sentiment.register import register_version
from harness import Kube, model_deployment, wait_events, wait_for
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess
from support.prometheus_script import FAILING, ScriptedPrometheus

REPLICAS = 2
GATE = "aliasroll.io/routed"


def pods(kube: Kube, namespace: str, version: str) -> dict[str, dict[str, Any]]:
    found = kube.list(
        "pods", namespace, selector=f"aliasroll.io/modeldeployment=fast,aliasroll.io/model-version={version}"
    )
    return {pod["metadata"]["uid"]: pod for pod in found if not pod["metadata"].get("deletionTimestamp")}


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for found in pod.get("status", {}).get("conditions") or ():
        if found["type"] == kind:
            return str(found["status"])
    return None


def routed(kube: Kube, namespace: str, version: str) -> bool:
    found = pods(kube, namespace, version)
    return len(found) == REPLICAS and all(
        condition(pod, GATE) == "True" and condition(pod, "Ready") == "True" for pod in found.values()
    )


def warm(kube: Kube, namespace: str, version: str) -> bool:
    found = pods(kube, namespace, version)
    return len(found) == REPLICAS and all(
        condition(pod, GATE) == "False" and condition(pod, "Ready") == "False" for pod in found.values()
    )


def status(kube: Kube, namespace: str) -> dict[str, Any]:
    resource = kube.get("modeldeployment", "fast", namespace)
    assert resource is not None
    return dict(resource.get("status") or {})


def test_a_rollback_to_a_warm_version_changes_only_the_gates(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    manifest["spec"]["rollback"] = {"window": "30m"}
    kube.apply(manifest, namespace=namespace)

    # One Deployment per version, its pods gated, routed by the operator.
    wait_for(lambda: routed(kube, namespace, v1), timeout=60, what=f"version {v1}'s pods routed")
    deployment = kube.get("deployment", f"fast-v{v1}", namespace)
    assert deployment is not None
    assert deployment["metadata"]["labels"]["aliasroll.io/role"] == "production"
    template = deployment["spec"]["template"]
    assert template["spec"]["readinessGates"] == [{"conditionType": GATE}]
    assert kube.get("deployment", "fast-production", namespace) is None

    # Forward to v2 (cold): v1 stays, warm.
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(lambda: routed(kube, namespace, v2), timeout=60, what=f"version {v2}'s pods routed")
    wait_for(lambda: warm(kube, namespace, v1), timeout=60, what=f"version {v1} warm")
    warm_v1 = set(pods(kube, namespace, v1))
    found = wait_for(lambda: status(kube, namespace).get("warm"), timeout=30, what="status.warm")
    assert [(entry["version"], entry["routed"]) for entry in found] == [(v1, False)]
    assert "until" in found[0]
    listed = kube.get("deployment", f"fast-v{v1}", namespace)
    assert listed is not None
    assert listed["metadata"]["labels"]["aliasroll.io/role"] == "warm"

    # Back to v1: the same pods take the requests again; no pod of v1 is created.
    registry.set_registered_model_alias(model_name, "production", v1)
    wait_for(lambda: routed(kube, namespace, v1), timeout=30, what=f"version {v1} routed again")
    wait_for(lambda: warm(kube, namespace, v2), timeout=30, what=f"version {v2} warm")
    assert set(pods(kube, namespace, v1)) == warm_v1
    events = wait_events(kube, namespace, "fast", "FastRollback", timeout=30)
    messages = [message for _, reason, message in events if reason == "FastRollback"]
    assert any(f"moved back to version {v1}" in message for message in messages), messages
    final = wait_for(
        lambda: (
            (found := status(kube, namespace)).get("production", {}).get("version") == v1
            and "fastSwitch" not in found
            and found
        ),
        timeout=30,
        what="status at v1, the switch over",
    )
    assert [entry["version"] for entry in final["warm"]] == [v2]


def test_a_warm_version_goes_when_the_window_is_shortened_to_zero(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    manifest["spec"]["rollback"] = {"window": "30m"}
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: routed(kube, namespace, v1), timeout=60, what=f"version {v1}'s pods routed")
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(lambda: warm(kube, namespace, v1), timeout=60, what=f"version {v1} warm")
    manifest["spec"]["rollback"] = {"window": "0s"}
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: kube.get("deployment", f"fast-v{v1}", namespace) is None,
        timeout=30,
        what=f"version {v1}'s Deployment gone",
    )
    # Status is written after the pass's deletions: it follows a moment later.
    wait_for(lambda: "warm" not in status(kube, namespace), timeout=30, what="status.warm gone")
    assert routed(kube, namespace, v2)


def test_setting_spec_rollback_drains_the_track_deployments_with_capacity_kept(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: (
            (found := kube.get("deployment", "fast-production", namespace)) is not None
            and found.get("status", {}).get("availableReplicas") == REPLICAS
        ),
        timeout=60,
        what="the production track serving",
    )
    manifest["spec"]["rollback"] = {"window": "30m"}
    kube.apply(manifest, namespace=namespace)
    lowest = REPLICAS

    def migrated() -> bool:
        nonlocal lowest
        ready = [
            pod
            for pod in kube.list("pods", namespace, selector="aliasroll.io/modeldeployment=fast")
            if condition(pod, "Ready") == "True" and not pod["metadata"].get("deletionTimestamp")
        ]
        lowest = min(lowest, len(ready))
        return kube.get("deployment", "fast-production", namespace) is None and routed(kube, namespace, v1)

    wait_for(migrated, timeout=90, what="the track Deployment replaced by fast-v1", interval=0.1)
    assert lowest >= REPLICAS, f"{lowest} Ready pods during the move to a Deployment per version"
    # Once set, spec.rollback cannot be removed (CEL): the message says what to do instead.
    del manifest["spec"]["rollback"]
    refused = kube.try_apply(manifest, namespace=namespace)
    assert refused.returncode != 0
    assert "window: 0s" in refused.stderr


def backends(kube: Kube, namespace: str) -> dict[str, int] | None:
    route = kube.get("httproute", "fast", namespace)
    if route is None:
        return None
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_the_gateway_api_router_moves_the_weight_to_a_warm_version(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    manifest["spec"]["rollback"] = {"window": "30m"}
    manifest["spec"]["traffic"] = {"router": "gatewayAPI"}
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: backends(kube, namespace) == {f"fast-v{v1}": 100}, timeout=60, what=f"the route on v{v1}"
    )
    service = kube.get("service", f"fast-v{v1}", namespace)
    assert service is not None
    assert service["spec"]["selector"]["aliasroll.io/workload"] == f"fast-v{v1}"
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(
        lambda: backends(kube, namespace) == {f"fast-v{v2}": 100}, timeout=60, what=f"the route on v{v2}"
    )
    wait_for(lambda: warm(kube, namespace, v1), timeout=30, what=f"version {v1} warm")
    warm_v1 = set(pods(kube, namespace, v1))
    registry.set_registered_model_alias(model_name, "production", v1)
    wait_for(
        lambda: backends(kube, namespace) == {f"fast-v{v1}": 100}, timeout=30, what=f"the route back on v{v1}"
    )
    assert set(pods(kube, namespace, v1)) == warm_v1
    wait_events(kube, namespace, "fast", "FastRollback", timeout=30)


def test_a_bake_runs_after_a_move_forward_and_ends_with_its_record(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    """spec.rollback.bake wired end to end: a move forward from a version kept warm starts a bake,
    its clock starts once the new version takes every request, the operator reads it on its own
    (kwok's pods answer no /metrics: the readings are unreadable, never a failure), and the bake
    passes on its duration, with its record in status and the tags on the version."""
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    manifest["spec"]["rollback"] = {
        "window": "30m",
        "bake": {"duration": "6s", "analysis": {"interval": "2s", "errorRate": {"maxPercent": 1}}},
    }
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: routed(kube, namespace, v1), timeout=60, what=f"version {v1}'s pods routed")
    assert "bake" not in status(kube, namespace)  # a first deploy is not baked

    registry.set_registered_model_alias(model_name, "production", v2)
    started = wait_events(kube, namespace, "fast", "BakeStarted", timeout=60)
    assert any(
        f"back to version {v1}" in message for _, reason, message in started if reason == "BakeStarted"
    )
    baked = wait_for(
        lambda: (found := status(kube, namespace).get("bake") or {}).get("phase") == "Passed" and found,
        timeout=90,
        what="the bake passed",
    )
    assert (baked["version"], baked["previous"]) == (v2, v1)
    assert baked["until"] > baked["startedAt"]
    assert "no conclusive measurement" in baked["message"]
    wait_events(kube, namespace, "fast", "BakePassed", timeout=30)
    tags = wait_for(
        lambda: (
            (found := registry.get_model_version(model_name, v2).tags).get("aliasroll.io/bake.outcome")
            and found
        ),
        timeout=60,
        what="the bake's outcome tags",
    )
    assert tags["aliasroll.io/bake.outcome"] == "passed"
    assert registry.get_model_version_by_alias(model_name, "production").version == v2


@pytest.fixture(scope="module")
def prometheus() -> Iterator[ScriptedPrometheus]:
    with ScriptedPrometheus() as server:
        yield server


def test_a_failed_bake_moves_production_back_and_the_rollback_is_fast(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    prometheus: ScriptedPrometheus,
) -> None:
    """The new production answers half its requests with 5xx (the scripted Prometheus, which the bake
    asks for that version alone): failureLimit failed readings, @production back to the warm version
    in MLflow (expecting the baked one), and version mode rolls back by routing only."""
    prometheus.set(model_name, FAILING)
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    manifest = model_deployment("fast", model_name, mlflow_server.url, replicas=REPLICAS)
    rules = {
        "interval": "2s",
        "failureLimit": 2,
        "errorRate": {"maxPercent": 1},
        "prometheus": {"address": prometheus.url},
    }
    manifest["spec"]["rollback"] = {"window": "30m", "bake": {"duration": "5m", "analysis": rules}}
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: routed(kube, namespace, v1), timeout=60, what=f"version {v1}'s pods routed")
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(lambda: warm(kube, namespace, v1), timeout=60, what=f"version {v1} warm")
    warm_v1 = set(pods(kube, namespace, v1))

    failed = wait_events(kube, namespace, "fast", "BakeFailed", timeout=60)
    said = [message for _, reason, message in failed if reason == "BakeFailed"]
    assert any("error rate 50.00% above its bound 1.00%" in message for message in said), said
    wait_for(
        lambda: registry.get_model_version_by_alias(model_name, "production").version == v1,
        timeout=30,
        what=f"@production back on version {v1} in MLflow",
    )
    wait_for(lambda: routed(kube, namespace, v1), timeout=30, what=f"version {v1} routed again")
    assert set(pods(kube, namespace, v1)) == warm_v1, "the rollback created pods"
    wait_events(kube, namespace, "fast", "FastRollback", timeout=30)
    record = wait_for(
        lambda: (found := status(kube, namespace).get("bake") or {}).get("aliasWrite") == "Made" and found,
        timeout=30,
        what="the bake's move back recorded as made",
    )
    assert (record["phase"], record["version"], record["previous"]) == ("Failed", v2, v1)
    assert record["failures"] == 2
    tags = registry.get_model_version(model_name, v2).tags
    assert tags["aliasroll.io/bake.outcome"] == "failed"
