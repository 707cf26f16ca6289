"""Names the operator would take are checked first: an object it does not control is never adopted,
overwritten or pruned, and the resource says which object is in the way."""

from __future__ import annotations

from harness import (
    Deploy,
    Kube,
    condition_message,
    model_deployment,
    ready_at,
    registered,
    wait_condition,
    wait_events,
    wait_for,
)
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


def test_a_users_service_is_never_taken_over(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    users_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sentiment", "labels": {"team": "search"}},
        "spec": {"selector": {"app": "their-app"}, "ports": [{"port": 8000}]},
    }
    kube.apply(users_service, namespace=namespace)
    before = kube.get("service", "sentiment", namespace, managed_fields=True)
    assert before is not None

    kube.apply(model_deployment("sentiment", model_name, mlflow_server.url), namespace=namespace)
    resource = wait_condition(kube, namespace, "sentiment", "Ready", ("False", "NameConflict"))
    message = condition_message(resource, "Ready")
    assert "Service 'sentiment'" in message
    assert "controlled by nothing" in message

    after = kube.get("service", "sentiment", namespace, managed_fields=True)
    assert after is not None
    assert after["metadata"].get("ownerReferences") is None, "the user's Service was adopted"
    assert after["spec"]["selector"] == {"app": "their-app"}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "it was written"
    assert kube.get("deployment", "sentiment-production", namespace) is None, "half a deployment was made"
    events = wait_events(kube, namespace, "sentiment", "NameConflict")
    assert "NameConflict" in [reason for kind, reason, _ in events if kind == "Warning"]

    # The user moves their Service away: the operator goes ahead.
    kube.cluster.kubectl("delete", "service", "sentiment", "-n", namespace)
    wait_for(
        lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready once the name is free"
    )


def test_two_resources_never_fight_over_a_name(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """`a` (gatewayAPI) wants Service `a-canary` for its canary track; resource `a-canary` wants the
    same name for its stable Service. The first keeps it; the second says so and waits."""
    deploy(model_deployment("a-canary", model_name, mlflow_server.url), versions=1, ready="1", production="1")
    owner_uid = kube.get("mdep", "a-canary", namespace)["metadata"]["uid"]  # type: ignore[index]
    service_before = kube.get("service", "a-canary", namespace)
    assert service_before is not None

    registry.set_registered_model_alias(model_name, "canary", "1")  # no canary workload: same version
    kube.apply(
        model_deployment(
            "a",
            model_name,
            mlflow_server.url,
            traffic={"router": "gatewayAPI"},
            canary={"alias": "canary", "weight": 10},
        ),
        namespace=namespace,
    )
    wait_for(lambda: ready_at(kube, namespace, "a", "1"), timeout=60, what="a Ready without a canary")
    # A canary version for `a` needs Service a-canary, which belongs to the other resource.
    from support.registry import quick_versions

    quick_versions(registry, model_name, 1, create=False)  # version 2
    registry.set_registered_model_alias(model_name, "canary", "2")
    resource = wait_condition(kube, namespace, "a", "Ready", ("False", "NameConflict"), timeout=30)
    assert "Service 'a-canary'" in condition_message(resource, "Ready")
    assert "ModelDeployment 'a-canary'" in condition_message(resource, "Ready")
    assert resource["status"]["production"]["version"] == "1", "status names what runs"

    service_after = kube.get("service", "a-canary", namespace)
    assert service_after is not None
    (ref,) = service_after["metadata"]["ownerReferences"]
    assert ref["uid"] == owner_uid
    assert service_after["spec"]["selector"] == service_before["spec"]["selector"]
    assert service_after["metadata"]["resourceVersion"] == service_before["metadata"]["resourceVersion"]
    assert ready_at(kube, namespace, "a-canary", "1"), "the first owner keeps serving"
