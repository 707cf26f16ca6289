"""The resource's lifecycle under churn: replaced in place (`kubectl replace --force`, Argo CD's
Replace sync option), a new object under the same name is reconciled and owns the children."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Deploy, Kube, available_at, model_deployment, ready_at, wait_for
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess


def owner_uid(kube: Kube, namespace: str, name: str) -> str | None:
    obj = kube.get("deployment", name, namespace)
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return next((ref["uid"] for ref in refs if ref.get("controller")), None)


def test_a_replaced_resource_is_reconciled_under_its_new_uid(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest: dict[str, Any] = model_deployment("sentiment", model_name, mlflow_server.url, replicas=2)
    first = deploy(manifest, versions=2, ready="1", production="1")
    old_uid = first["metadata"]["uid"]
    assert owner_uid(kube, namespace, "sentiment-production") == old_uid
    # Kopf keeps nothing on the resource: no finalizer, no last-handled state (handlers.NoDiffBase).
    assert not first["metadata"].get("finalizers")
    assert not [key for key in first["metadata"].get("annotations") or {} if "kopf" in key]

    # Delete and create again under the same name: a new object, a new uid, no status yet.
    kube.cluster.kubectl("replace", "--force", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def reconciled_again() -> dict[str, Any] | None:
        resource = ready_at(kube, namespace, "sentiment", "1")
        return resource if resource is not None and resource["metadata"]["uid"] != old_uid else None

    second = wait_for(reconciled_again, timeout=60, what="the new object Ready (status written again)")
    new_uid = second["metadata"]["uid"]
    wait_for(
        lambda: owner_uid(kube, namespace, "sentiment-production") == new_uid,
        timeout=60,
        what="sentiment-production owned by the new object",
    )
    wait_for(
        lambda: (
            owner_uid(kube, namespace, "sentiment-canary") is None
            and all(
                ref["uid"] == new_uid
                for obj in kube.list(
                    "deployments,services", namespace, "aliasroll.io/modeldeployment=sentiment"
                )
                for ref in obj["metadata"].get("ownerReferences") or []
            )
        ),
        timeout=60,
        what="no child left owned by the old object",
    )

    # The new object's worker outlived the old object's deletion: it still follows the registry.
    registry.set_registered_model_alias(model_name, "production", "2")
    wait_for(
        lambda: available_at(kube, namespace, "sentiment-production", "2"), timeout=60, what="rolled to v2"
    )
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="Ready at v2")


@pytest.fixture
def quick_resync(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session's operator, restarted with a resync every 2 s (and restarted as it was after)."""
    operator.stop()
    operator.extra_env["ALIASROLL_RESYNC_SECONDS"] = "2"
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        operator.extra_env.pop("ALIASROLL_RESYNC_SECONDS", None)
        operator.start()


def test_resync_lists_the_resources_and_leaves_live_workers_alone(
    kube: Kube,
    quick_resync: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    deploy(
        model_deployment("sentiment", model_name, mlflow_server.url, replicas=1),
        versions=2,
        ready="1",
        production="1",
    )
    marker = len(quick_resync.log_path.read_text().splitlines())

    def resyncs() -> list[str]:
        lines = quick_resync.log_path.read_text().splitlines()[marker:]
        return [line for line in lines if "resync: " in line]

    wait_for(lambda: len(resyncs()) >= 2, timeout=30, what="two resyncs")
    # Listed, in step: nothing stopped, nothing started, no failed list (RBAC allows it).
    assert all(re.search(r"resync: [1-9]\d* listed, 0 stopped, 0 started", line) for line in resyncs()), (
        resyncs()
    )
    # The worker still follows the registry after the resyncs.
    registry.set_registered_model_alias(model_name, "production", "2")
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="Ready at v2")
