"""The scale subresource (kubectl scale, autoscalers) and spec.suspend, against the real API server."""

from __future__ import annotations

import json

from harness import Deploy, Kube, condition, model_deployment, ready_at, wait_events, wait_for
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


def replicas(kube: Kube, namespace: str, track: str) -> int | None:
    deployment = kube.get("deployment", f"sentiment-{track}", namespace)
    return None if deployment is None else int(deployment["spec"]["replicas"])


def test_kubectl_scale_splits_the_new_total_by_weight(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    deploy(
        model_deployment(
            "sentiment", model_name, mlflow_server.url, replicas=5, canary={"alias": "canary", "weight": 20}
        ),
        versions=2,
        ready=("1", "2"),
        production="1",
        canary="2",
    )

    # What an autoscaler reads and writes: the scale subresource.
    scale = json.loads(
        kube.cluster.kubectl(
            "get", "mdep", "sentiment", "-n", namespace, "--subresource=scale", "-o", "json"
        ).stdout
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 5
    assert scale["status"]["selector"] == "aliasroll.io/modeldeployment=sentiment"
    assert scale["status"]["replicas"] == 5

    kube.cluster.kubectl("scale", "mdep", "sentiment", "-n", namespace, "--replicas=10")
    wait_for(
        lambda: (replicas(kube, namespace, "production"), replicas(kube, namespace, "canary")) == (8, 2),
        timeout=30,
        what="10 pods split 8 + 2",
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1", "2"), timeout=60, what="Ready at 10 pods")

    # Each running track has a disruption budget.
    budgets = {item["metadata"]["name"]: item["spec"] for item in kube.list("pdb", namespace)}
    assert budgets["sentiment-production"]["maxUnavailable"] == 1
    assert budgets["sentiment-canary"]["maxUnavailable"] == 1

    # One pod per track: the disruption controller lets a node drain evict each (a budget of
    # minAvailable 1 would block the drain for as long as the track has one pod).
    kube.cluster.kubectl("scale", "mdep", "sentiment", "-n", namespace, "--replicas=1")
    wait_for(
        lambda: (replicas(kube, namespace, "production"), replicas(kube, namespace, "canary")) == (1, 1),
        timeout=30,
        what="1 pod split 1 + 1",
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1", "2"), timeout=60, what="Ready at 1 + 1 pods")
    wait_for(
        lambda: (
            {
                item["metadata"]["name"]: item.get("status", {}).get("disruptionsAllowed")
                for item in kube.list("pdb", namespace)
            }
            == {"sentiment-production": 1, "sentiment-canary": 1}
        ),
        timeout=30,
        what="a drain may evict the one pod of each track",
    )

    kube.cluster.kubectl("scale", "mdep", "sentiment", "-n", namespace, "--replicas=0")
    resource = wait_for(
        lambda: (
            found
            if condition(found := kube.get("mdep", "sentiment", namespace), "Ready")
            == ("True", "ScaledToZero")
            else None
        ),
        timeout=60,
        what="Ready=True/ScaledToZero",
    )
    assert resource["status"]["production"]["version"] == "1"
    assert replicas(kube, namespace, "production") == 0


def test_a_horizontal_pod_autoscaler_scales_the_model_deployment(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """The real HPA controller finds the scale subresource and raises spec.replicas to its minimum
    (it needs no metrics for that); the operator splits what it set, and no one fights over it."""
    deploy(
        model_deployment(
            "sentiment", model_name, mlflow_server.url, replicas=1, canary={"alias": "canary", "weight": 25}
        ),
        versions=2,
        ready=("1", "2"),
        production="1",
        canary="2",
    )
    kube.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "sentiment"},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "aliasroll.io/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": "sentiment",
                },
                "minReplicas": 8,
                "maxReplicas": 12,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
        namespace=namespace,
    )
    wait_for(
        lambda: (replicas(kube, namespace, "production"), replicas(kube, namespace, "canary")) == (6, 2),
        timeout=60,
        what="the HPA's 8 pods split 6 + 2",
    )
    hpa = kube.get("hpa", "sentiment", namespace)
    assert hpa is not None
    able = next(c for c in hpa["status"]["conditions"] if c["type"] == "AbleToScale")
    assert able["status"] == "True", able
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1", "2"), timeout=60, what="Ready at 8 pods")
    resource = kube.get("mdep", "sentiment", namespace)
    assert resource is not None
    assert resource["spec"]["replicas"] == 8
    assert resource["status"]["replicas"] == 8


def test_suspend_stops_following_aliases_and_resume_catches_up(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment("sentiment", model_name, mlflow_server.url, replicas=2)
    deploy(manifest, versions=2, ready="1", production="1")

    manifest["spec"]["suspend"] = True
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: condition(kube.get("mdep", "sentiment", namespace), "Progressing") == ("False", "Suspended"),
        timeout=30,
        what="Progressing=False/Suspended",
    )
    registry.set_registered_model_alias(model_name, "production", "2")
    # Several poll intervals (1 s) pass: nothing rolls, and the Ready message says why.
    resource = wait_for(
        lambda: (
            found
            if "points at 2" in _ready_message(found := kube.get("mdep", "sentiment", namespace))
            else None
        ),
        timeout=30,
        what="the move seen but not followed",
    )
    assert resource["status"]["production"]["version"] == "1"
    deployment = kube.get("deployment", "sentiment-production", namespace)
    assert deployment is not None
    assert deployment["spec"]["template"]["metadata"]["labels"]["aliasroll.io/model-version"] == "1"

    manifest["spec"]["suspend"] = False
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="resumed: Ready at 2")
    wait_events(kube, namespace, "sentiment", "Suspended")


def _ready_message(resource: dict[str, object] | None) -> str:
    for item in (resource or {}).get("status", {}).get("conditions", []):  # type: ignore[attr-defined]
        if item["type"] == "Ready":
            return str(item["message"])
    return ""
