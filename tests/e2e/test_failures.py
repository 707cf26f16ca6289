"""Bad days: the registry down, an alias gone, a Secret missing, a model not registered yet, a
version whose pods exit (a requirement the index lacks).

In each, what serves keeps serving, a condition and an event say why, and the operator recovers by
itself once the cause is gone.
"""

from __future__ import annotations

import json
import time
from typing import Any

from harness import (
    Deploy,
    Kube,
    available_at,
    condition,
    condition_message,
    deployment_version,
    model_deployment,
    ready_at,
    registered,
    wait_condition,
    wait_events,
    wait_for,
)
from mlflow import MlflowClient

from localcluster import READY_DELAY_ANNOTATION
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


def test_registry_outage_rolls_nothing_and_recovers(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    deploy(
        model_deployment("sentiment", model_name, mlflow_server.url), versions=2, ready="1", production="1"
    )

    mlflow_server.stop()
    try:
        down = wait_condition(
            kube, namespace, "sentiment", "RegistryReachable", ("False", "RegistryUnreachable"), timeout=30
        )
        # Still serving: Ready, same version, every object in place.
        assert condition(down, "Ready") == ("True", "Serving")
        assert "not followed until the registry answers" in condition_message(down, "Ready")
        time.sleep(3)  # several failed polls
        assert available_at(kube, namespace, "sentiment-production", "1")
        assert kube.get("service", "sentiment", namespace) is not None
        events = wait_events(kube, namespace, "sentiment", "RegistryUnreachable")
        assert ("Warning", "RegistryUnreachable") in [(t, r) for t, r, _ in events]
    finally:
        mlflow_server.start()

    # Back: the next poll answers and an alias move rolls again.
    wait_for(
        lambda: (
            condition(kube.get("mdep", "sentiment", namespace), "RegistryReachable")
            == ("True", "RegistryAnswered")
        ),
        timeout=30,
        what="RegistryReachable=True again",
    )
    registry.set_registered_model_alias(model_name, "production", "2")
    wait_for(
        lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="rolled to v2 after the outage"
    )


def test_deleted_alias_keeps_the_version_serving(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    deploy(
        model_deployment("sentiment", model_name, mlflow_server.url), versions=1, ready="1", production="1"
    )

    registry.delete_registered_model_alias(model_name, "production")
    resource = wait_condition(
        kube, namespace, "sentiment", "AliasesResolved", ("False", "AliasNotFound"), timeout=30
    )
    message = condition_message(resource, "AliasesResolved")
    assert "has no alias @production" in message
    assert "version 1 keeps serving" in message
    assert condition(resource, "Ready") == ("True", "Serving")
    assert deployment_version(kube, namespace, "sentiment-production") == "1"
    events = wait_events(kube, namespace, "sentiment", "AliasNotFound")
    assert ("Warning", "AliasNotFound") in [(t, r) for t, r, _ in events]

    registry.set_registered_model_alias(model_name, "production", "1")
    wait_for(
        lambda: (
            condition(kube.get("mdep", "sentiment", namespace), "AliasesResolved") == ("True", "Resolved")
        ),
        timeout=30,
        what="resolved again",
    )


def test_missing_credentials_secret_then_created(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    manifest["spec"]["registry"]["credentialsSecretRef"] = {"name": "mlflow-credentials"}
    deploy(manifest, versions=1, ready=None, production="1")

    resource = wait_condition(
        kube, namespace, "sentiment", "RegistryReachable", ("False", "CredentialsNotFound"), timeout=30
    )
    assert condition(resource, "Ready") == ("False", "NothingToServe")
    assert kube.get("deployment", "sentiment-production", namespace) is None

    secret_value = "s3cr3t-token-value"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "mlflow-credentials"},
            "stringData": {"MLFLOW_TRACKING_TOKEN": secret_value},
        },
        namespace=namespace,
    )
    deployment = wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", "1"),
        timeout=60,
        what="deployed once the Secret exists",
    )
    # The operator's Secret may write to the registry: the pods never get it unless
    # spec.serving.credentialsSecretRef names it, and status says they have none.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container
    resource = wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=30, what="Ready")
    assert condition(resource, "PodCredentials") == ("False", "PodCredentialsNotSet")
    # Nothing secret in status or events.
    assert secret_value not in str(resource)
    assert secret_value not in str(kube.events(namespace, "sentiment"))
    assert secret_value not in operator.log_tail(100_000)


def test_model_registered_after_the_resource(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    kube.apply(model_deployment("sentiment", model_name, mlflow_server.url), namespace=namespace)
    resource = wait_condition(
        kube, namespace, "sentiment", "AliasesResolved", ("False", "ModelNotFound"), timeout=30
    )
    assert condition(resource, "Ready") == ("False", "NothingToServe")

    registered(registry, model_name, 1, production="1")
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="deployed once registered")


def test_gateway_router_without_gateway_api_crds(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    """A cluster without the Gateway API: the replicas router works, gatewayAPI says what to install."""
    registered(registry, model_name, 1, production="1")
    kube.cluster.kubectl("delete", "crd", "httproutes.gateway.networking.k8s.io", "--wait=true")
    try:
        kube.apply(model_deployment("plain", model_name, mlflow_server.url), namespace=namespace)
        kube.apply(
            model_deployment("routed", model_name, mlflow_server.url, traffic={"router": "gatewayAPI"}),
            namespace=namespace,
        )
        wait_for(lambda: ready_at(kube, namespace, "plain", "1"), timeout=60, what="replicas router Ready")
        routed = wait_condition(kube, namespace, "routed", "Ready", ("False", "ApplyFailed"), timeout=30)
        message = condition_message(routed, "Ready")
        assert "Gateway API CRDs are not installed" in message
    finally:
        kube.cluster.install_gateway_api_crds()
    wait_for(lambda: ready_at(kube, namespace, "routed", "1"), timeout=60, what="Ready once the CRDs exist")


# What the serving container writes to its termination log when the index lacks a requirement.
EXIT_MESSAGE = (
    "cannot install aliasroll-nonexistent==1.0 for models:/m/2 from http://mirror.internal/simple "
    "(UV_INDEX_URL): uv pip compile failed: No solution found"
)


def _crash_looping(pod: dict[str, Any]) -> dict[str, Any]:
    """The status a kubelet writes for a container that exited 1 with a termination message and
    waits to be restarted."""
    container = pod["spec"]["containers"][0]
    started = pod["metadata"]["creationTimestamp"]
    return {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": EXIT_MESSAGE,
                            "startedAt": started,
                            "finishedAt": started,
                        }
                    },
                }
            ],
        }
    }


def _pods(kube: Kube, namespace: str, version: str) -> list[dict[str, Any]]:
    return kube.list("pods", namespace, f"aliasroll.io/model-version={version}")


def test_a_version_whose_pods_exit_stalls_with_their_message_while_the_previous_serves(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    deploy(manifest, versions=2, ready="1", production="1", broken="2")
    serving = {pod["metadata"]["uid"] for pod in _pods(kube, namespace, "1")}
    assert len(serving) == 2

    # One change: the alias naming version 2, and pods that kwok leaves Pending, so that the test
    # writes how they end (kwok has no container to exit).
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["model"]["alias"] = "broken"
    broken["spec"]["serving"] = {"podTemplate": {"metadata": {"annotations": {READY_DELAY_ANNOTATION: "1h"}}}}
    kube.apply(broken, namespace=namespace)
    pod = wait_for(lambda: next(iter(_pods(kube, namespace, "2")), None), timeout=30, what="a pod of v2")
    kube.cluster.kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(_crash_looping(pod)),
    )

    resource = wait_condition(kube, namespace, "sentiment", "Ready", ("False", "RolloutStalled"), timeout=30)
    message = condition_message(resource, "Ready")
    assert f"pod {pod['metadata']['name']} exited with code 1: {EXIT_MESSAGE}" in message, message
    assert condition(resource, "Progressing") == ("False", "RolloutStalled")
    events = wait_events(kube, namespace, "sentiment", "RolloutStalled")
    assert any(
        (kind, reason) == ("Warning", "RolloutStalled") and EXIT_MESSAGE in said
        for kind, reason, said in events
    ), events
    # The previous version's pods are the same ones, ready, none leaving: they serve every request.
    still = _pods(kube, namespace, "1")
    assert {p["metadata"]["uid"] for p in still} == serving
    assert all(
        not p["metadata"].get("deletionTimestamp")
        and {"type": "Ready", "status": "True"}
        in [{"type": c["type"], "status": c["status"]} for c in p["status"]["conditions"]]
        for p in still
    ), still
    deployment = kube.get("deployment", "sentiment-production", namespace)
    assert deployment is not None
    assert deployment["status"].get("availableReplicas") == 2

    # Back to the previous spec: the rollout ends on version 1 with the same pods, Ready again.
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at v1 again")
    assert {p["metadata"]["uid"] for p in _pods(kube, namespace, "1")} == serving


def _restart_cycle(pod: dict[str, Any], step: int) -> dict[str, Any]:
    """The status a kubelet writes for a container that keeps exiting 1, at `step` of its cycle:
    exited, waiting in CrashLoopBackOff, running again (not ready), exited again, ..."""
    crash_looping = _crash_looping(pod)
    container = crash_looping["status"]["containerStatuses"][0]
    exited = container["lastState"]["terminated"]
    restarts, phase = divmod(step, 3)
    if phase == 0:
        container["state"] = {"terminated": exited}
        container["lastState"] = {"terminated": exited} if restarts else {}
    elif phase == 2:
        container["state"] = {"running": {"startedAt": exited["finishedAt"]}}
    container["restartCount"] = restarts + (phase > 0)
    return crash_looping


def test_a_crash_looping_version_stays_stalled_with_one_warning_and_counts_none_of_the_old_pods(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """With the operator's default progress deadline (600 s, never reached here) only the pod says
    the roll stalled, and it says so in every state of its restart cycle, running again included."""
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    deploy(manifest, versions=2, ready="1", production="1", broken="2")

    broken = json.loads(json.dumps(manifest))
    broken["spec"]["model"]["alias"] = "broken"
    broken["spec"]["serving"] = {"podTemplate": {"metadata": {"annotations": {READY_DELAY_ANNOTATION: "1h"}}}}
    kube.apply(broken, namespace=namespace)
    pod = wait_for(lambda: next(iter(_pods(kube, namespace, "2")), None), timeout=30, what="a pod of v2")

    def kubelet_writes(step: int) -> None:
        kube.cluster.kubectl(
            "patch",
            "pod",
            pod["metadata"]["name"],
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(_restart_cycle(pod, step)),
        )

    kubelet_writes(0)
    wait_condition(kube, namespace, "sentiment", "Ready", ("False", "RolloutStalled"), timeout=30)
    # Three restarts, each state held for about two of the operator's passes (pollInterval 1s).
    samples: list[tuple[str, str] | None] = []
    tracks: list[dict[str, Any]] = []
    for step in range(1, 9):
        kubelet_writes(step)
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            resource = kube.get("mdep", "sentiment", namespace)
            samples.append(condition(resource, "Ready"))
            tracks.append((resource or {}).get("status", {}).get("production", {}))
            time.sleep(0.25)
    assert set(samples) == {("False", "RolloutStalled")}, samples
    # The two available pods are version 1's: version 2 counts none of them.
    assert {(t.get("version"), t.get("availableReplicas")) for t in tracks} == {("2", 0)}, tracks
    message = condition_message(kube.get("mdep", "sentiment", namespace) or {}, "Ready")
    assert "the previous version keeps serving production on 2 pods" in message, message
    stalls = [event for event in kube.events(namespace, "sentiment") if event[1] == "RolloutStalled"]
    assert len(stalls) == 1, stalls

    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at v1 again")
