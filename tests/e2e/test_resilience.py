"""The operator and its objects under stress: killed mid-rollout, deleted, edited by hand."""

from __future__ import annotations

import json

from harness import (
    Deploy,
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

OWNED = "aliasroll.io/modeldeployment=sentiment"


def test_operator_killed_mid_rollout_converges(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment("sentiment", model_name, mlflow_server.url, replicas=4, canary={"weight": 25})
    deploy(manifest, versions=2, ready=("1", "2"), production="1", canary="2")

    try:
        registry.set_registered_model_alias(model_name, "production", "2")  # a promotion
        wait_for(
            lambda: deployment_version(kube, namespace, "sentiment-production") == "2",
            timeout=15,
            what="the rollout started",
        )
        operator.stop(kill=True)
    finally:
        operator.ensure_running()

    wait_for(lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="converged at v2")
    wait_for(
        lambda: kube.get("deployment", "sentiment-canary", namespace) is None,
        timeout=30,
        what="the promoted canary removed",
    )
    deployments = kube.list("deployments", namespace, OWNED)
    services = kube.list("services", namespace, OWNED)
    assert [d["metadata"]["name"] for d in deployments] == ["sentiment-production"]
    assert [s["metadata"]["name"] for s in services] == ["sentiment"]
    assert available_at(kube, namespace, "sentiment-production", "2")


def test_deleting_the_resource_removes_everything_it_owned(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment(
        "sentiment", model_name, mlflow_server.url, canary={"weight": 50}, traffic={"router": "gatewayAPI"}
    )
    deploy(manifest, versions=2, ready=("1", "2"), production="1", canary="2")
    assert len(kube.list("deployments,services,httproutes", namespace, OWNED)) == 6

    kube.cluster.kubectl("delete", "mdep", "sentiment", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(
        lambda: not kube.list("deployments,replicasets,services,httproutes,pods", namespace, OWNED),
        timeout=60,
        what="garbage collection of every owned object",
    )


def test_hand_edits_and_deletions_are_restored(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    deploy(
        model_deployment("sentiment", model_name, mlflow_server.url, replicas=2),
        versions=1,
        ready="1",
        production="1",
    )

    # Someone scales and re-images the Deployment by hand.
    patch = {
        "spec": {
            "replicas": 5,
            "template": {"spec": {"containers": [{"name": "model-server", "image": "someone/else:latest"}]}},
        }
    }
    kube.cluster.kubectl(
        "patch",
        "deployment",
        "sentiment-production",
        "-n",
        namespace,
        "--type=strategic",
        "-p",
        json.dumps(patch),
    )

    def restored() -> bool:
        deployment = kube.get("deployment", "sentiment-production", namespace) or {}
        spec = deployment.get("spec", {})
        image = spec.get("template", {}).get("spec", {}).get("containers", [{}])[0].get("image")
        return spec.get("replicas") == 2 and image == "aliasroll/serving:e2e"

    wait_for(restored, timeout=30, what="replicas and image restored")

    # Someone changes the Service selector, then deletes the Service and the Deployment.
    kube.cluster.kubectl(
        "patch",
        "service",
        "sentiment",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"selector": {"app": "other"}}}),
    )
    wait_for(
        lambda: (
            (kube.get("service", "sentiment", namespace) or {}).get("spec", {}).get("selector")
            == {"aliasroll.io/modeldeployment": "sentiment"}
        ),
        timeout=30,
        what="selector restored",
    )
    kube.cluster.kubectl("delete", "service", "sentiment", "-n", namespace)
    kube.cluster.kubectl("delete", "deployment", "sentiment-production", "-n", namespace)
    wait_for(lambda: kube.get("service", "sentiment", namespace), timeout=30, what="Service recreated")
    wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", "1"),
        timeout=60,
        what="Deployment recreated at v1",
    )
