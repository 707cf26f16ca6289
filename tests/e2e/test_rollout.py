"""The seed workflow, end to end: register, alias, apply; move the alias forward and back."""

from __future__ import annotations

from examples.sentiment.register import register_version
from harness import (
    Kube,
    available_at,
    deployment_version,
    model_deployment,
    ready_at,
    wait_for,
)
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


def test_alias_moves_roll_forward_and_back(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    # 1. Log and register the way MLflow's docs do, then set @production.
    v1 = register_version(mlflow_server.url, model_name, variant="v1", alias="production")

    # 2-3. Apply a ModelDeployment: a Deployment pinned to v1 becomes Available, status Ready.
    kube.apply(model_deployment("sentiment", model_name, mlflow_server.url, replicas=2), namespace=namespace)
    deployment = wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", v1),
        timeout=60,
        what=f"sentiment-production available at version {v1}",
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MODEL_URI"] == f"models:/{model_name}/{v1}"
    assert env["MLFLOW_TRACKING_URI"] == mlflow_server.url
    resource = wait_for(lambda: ready_at(kube, namespace, "sentiment", v1), timeout=30, what="Ready at v1")
    assert resource["status"]["production"]["runId"] == registry.get_model_version(model_name, v1).run_id
    service = kube.get("service", "sentiment", namespace)
    assert service is not None
    assert service["spec"]["selector"] == {"aliasroll.io/modeldeployment": "sentiment"}

    # 4. Register v2 and move @production: rolled within the poll interval (plus the roll itself).
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    registry.set_registered_model_alias(model_name, "production", v2)
    wait_for(
        lambda: deployment_version(kube, namespace, "sentiment-production") == v2,
        timeout=15,
        what="the pod template pinned to v2",
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", v2), timeout=60, what="Ready at v2")

    # Move it back: rolled back to v1, and the history tells the whole story.
    registry.set_registered_model_alias(model_name, "production", v1)
    wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", v1),
        timeout=60,
        what="rolled back to v1",
    )
    resource = wait_for(
        lambda: ready_at(kube, namespace, "sentiment", v1), timeout=60, what="Ready at v1 again"
    )
    history = [(e["track"], e["version"], e["reason"], "to" in e) for e in resource["status"]["history"]]
    assert history == [
        ("production", v1, "RolloutStarted", True),
        ("production", v2, "RolloutStarted", True),
        ("production", v1, "RollbackStarted", False),
    ]

    def reasons_after_three_completions() -> list[str] | None:
        reasons = [reason for _, reason, _ in kube.events(namespace, "sentiment")]
        return reasons if reasons.count("RolloutComplete") >= 3 else None

    # Each rollout was announced once (events go out through a queue, after the status is written).
    reasons = wait_for(reasons_after_three_completions, timeout=30, what="three RolloutComplete events")
    assert "RolloutStarted" in reasons
    assert reasons.count("RollbackStarted") == 1
    assert reasons.count("RolloutComplete") == 3

    # Nothing in the cluster was edited by hand, and the operator never wrote the spec.
    resource = kube.get("mdep", "sentiment", namespace, managed_fields=True)
    assert resource is not None
    managers = {entry["manager"] for entry in resource["metadata"]["managedFields"]}
    assert managers == {"kubectl-client-side-apply", "aliasroll"}
    spec_writers = {
        entry["manager"]
        for entry in resource["metadata"]["managedFields"]
        if "f:spec" in entry.get("fieldsV1", {})
    }
    assert spec_writers == {"kubectl-client-side-apply"}
    assert "finalizers" not in resource["metadata"]
