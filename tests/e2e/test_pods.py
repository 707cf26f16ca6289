"""The serving pods as the cluster runs them: podTemplate settings merged in, least privilege, drain."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Kube, model_deployment, ready_at, registered, wait_for
from mlflow import MlflowClient

from aliasroll.planning.workloads import pod_disruption_budget
from aliasroll.spec import ResourceRef, Track
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


@pytest.fixture
def classes(kube: Kube, namespace: str) -> Iterator[str]:
    """A PriorityClass and a RuntimeClass (cluster-wide; admission refuses pods naming absent ones)."""
    name = f"serving-{namespace}"[:63]
    kube.apply(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": 1000,
        }
    )
    kube.apply(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": name},
            "handler": "runc",
        }
    )
    yield name
    kube.cluster.kubectl("delete", "priorityclass,runtimeclass", name, "--wait=false", check=False)


def secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}
            ]
        }
    }
}
SPREAD = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}


def test_pod_template_settings_reach_the_pods(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    classes: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    # The operator's Secret also holds a binary key (a keystore): it must not stop the operator.
    kube.apply(
        secret(
            "operator-creds", {"MLFLOW_TRACKING_TOKEN": b"operator", "keystore.p12": b"\x1f\x8b\x08\xff\xfe"}
        ),
        namespace=namespace,
    )
    kube.apply(secret("pod-creds", {"MLFLOW_TRACKING_TOKEN": b"read-only"}), namespace=namespace)
    serving = {
        "credentialsSecretRef": {"name": "pod-creds"},
        "scratchSize": "20Gi",
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "podTemplate": {
            "metadata": {"labels": {"team": "search"}, "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {
                "nodeSelector": {"type": "kwok"},  # the local cluster's node
                "tolerations": [TOLERATION],
                "affinity": AFFINITY,
                "imagePullSecrets": [{"name": "regcred"}],
                "priorityClassName": classes,
                "runtimeClassName": classes,
                "topologySpreadConstraints": [SPREAD],
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            },
        },
    }
    registry_spec = {
        "trackingUri": mlflow_server.url,
        "pollInterval": "1s",
        "credentialsSecretRef": {"name": "operator-creds"},
    }
    kube.apply(
        model_deployment("sentiment", model_name, mlflow_server.url, registry=registry_spec, serving=serving),
        namespace=namespace,
    )
    # Ready: the pods were admitted (priority and runtime class exist) and scheduled with these settings.
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at v1")

    deployment = kube.get("deployment", "sentiment-production", namespace)
    assert deployment is not None
    template = deployment["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "aliasroll"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["aliasroll.io/model-uri"] == f"models:/{model_name}/1"
    assert pod["nodeSelector"] == {"type": "kwok"}
    assert pod["tolerations"] == [TOLERATION]
    assert pod["affinity"] == AFFINITY
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert (pod["priorityClassName"], pod["runtimeClassName"]) == (classes, classes)
    assert pod["topologySpreadConstraints"] == [SPREAD]
    assert pod["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 2000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # Least privilege: no API token; the pods' own Secret, not the one the operator reads.
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert container["envFrom"] == [{"secretRef": {"name": "pod-creds"}}]
    assert container["env"][-1] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
    }
    # Drain: endpoints drop the pod during preStop, the server drains within the grace period.
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == 40
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}]

    # The running pods carry them too (admission resolved the priority class).
    pods = kube.list("pods", namespace, "aliasroll.io/track=production")
    assert pods
    for running in pods:
        assert running["spec"]["priority"] == 1000
        assert running["spec"]["tolerations"][0] == TOLERATION
        assert "kube-api-access" not in json.dumps(running["spec"]["volumes"])


def test_service_account_gets_its_token(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    kube.cluster.kubectl("create", "serviceaccount", "model-reader", "-n", namespace)
    kube.apply(
        model_deployment(
            "sentiment",
            model_name,
            mlflow_server.url,
            replicas=1,
            serving={"serviceAccountName": "model-reader"},
        ),
        namespace=namespace,
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at v1")
    deployment = kube.get("deployment", "sentiment-production", namespace)
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("model-reader", True)
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}]


@pytest.mark.parametrize("replicas", [1, 3])
def test_pod_disruption_budget_is_what_the_api_server_accepts(
    kube: Kube, namespace: str, replicas: int
) -> None:
    owner = ResourceRef(namespace=namespace, name="sentiment", uid="00000000-0000-0000-0000-000000000001")
    budget = pod_disruption_budget(owner=owner, track=Track.CANARY, replicas=replicas)
    result = kube.cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(budget)
    )
    stored = json.loads(result.stdout)
    assert stored["spec"]["selector"] == budget["spec"]["selector"]
    assert stored["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # One pod at a time, a one-pod track included: a budget of minAvailable 1 would block drains.
    assert stored["spec"].get("minAvailable") is None
    assert stored["spec"].get("maxUnavailable") == 1
