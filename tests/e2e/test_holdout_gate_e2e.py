"""The holdout gate (spec.canary.gate) against the real API server, with the operator as the manifests
run it (its ServiceAccount's token: the Job's RBAC is proven here). kwok plays the Job's pod: it ends
with the termination message and exit code a test puts in the pod's annotations (localenv's rewritten
pod-complete stage), which stands in for the evaluator; the evaluator itself is proven against a real
MLflow server in tests/integration/test_gate_job.py.

The promise: a version under a gate has no pod until its Job's verdict passes it; a failure, or a Job
that ends without a verdict (even one that exits 0), ends the run before any request.
"""

from __future__ import annotations

from typing import Any

import pytest
from examples.sentiment.register import register_version
from harness import Kube, model_deployment, wait_events, wait_for
from mlflow import MlflowClient

from aliasroll.serving.gate import message as evaluator
from localcluster import EXIT_CODE_ANNOTATION, TERMINATION_MESSAGE_ANNOTATION
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess

pytestmark = pytest.mark.e2e

NAME = "gated"
GATE = {
    "data": "runs:/0a1b2c/holdout.parquet",
    "target": "label",
    "modelType": "classifier",
    "thresholds": [
        {"metric": "accuracy_score", "higherIsBetter": True, "threshold": 0.8, "minRelativeChange": 0}
    ],
}


def verdict(verdict_: str, reason: str, *, ok: bool) -> str:
    metrics = (evaluator.MetricReport("accuracy_score", 0.91 if ok else 0.71, 0.88, 0.88, ok),)
    report = evaluator.Report(verdict_, reason, metrics, run_id="0a1b2c3d4e5f")
    return evaluator.encode(report).decode()


def gated(tracking_uri: str, model: str, annotations: dict[str, str], **canary: Any) -> dict[str, Any]:
    return model_deployment(
        NAME,
        model,
        tracking_uri,
        replicas=2,
        canary={"steps": [{"weight": 50, "duration": "1h"}], "gate": GATE, **canary},
        serving={"podTemplate": {"metadata": {"annotations": annotations}}},
    )


def canary_status(kube: Kube, namespace: str) -> dict[str, Any]:
    resource = kube.get("modeldeployment", NAME, namespace) or {}
    return dict((resource.get("status") or {}).get("canary") or {})


def pods_of(kube: Kube, namespace: str, version: str) -> list[dict[str, Any]]:
    return kube.list(
        "pods",
        namespace,
        selector=f"aliasroll.io/modeldeployment={NAME},aliasroll.io/track=canary,aliasroll.io/model-version={version}",
    )


def gate_job(kube: Kube, namespace: str) -> dict[str, Any]:
    job = wait_for(
        lambda: (canary_status(kube, namespace).get("gate") or {}).get("job"),
        timeout=60,
        what="the gate's Job in status",
    )
    found = wait_for(lambda: kube.get("job", job, namespace), timeout=30, what=f"Job {job}")
    assert found["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    return dict(found)


def test_a_passed_gate_lets_the_version_take_its_first_step(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    passed = verdict(evaluator.PASSED, evaluator.REASON_PASSED, ok=True)
    kube.apply(
        gated(mlflow_server.url, model_name, {TERMINATION_MESSAGE_ANNOTATION: passed}), namespace=namespace
    )
    wait_for(lambda: kube.get("deployment", f"{NAME}-production", namespace), timeout=60, what="production")

    registry.set_registered_model_alias(model_name, "canary", v2)
    job = gate_job(kube, namespace)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert job["spec"]["backoffLimit"] == 0
    events = wait_events(kube, namespace, NAME, "GatePassed", timeout=60)
    assert any("accuracy_score 0.91" in message for _, reason, message in events if reason == "GatePassed")
    # Only now the canary's pods: the step's weight.
    wait_for(lambda: len(pods_of(kube, namespace, v2)) > 0, timeout=60, what=f"version {v2}'s canary pods")
    found = wait_for(
        lambda: (
            (status := canary_status(kube, namespace)).get("phase") in ("Progressing", "Analyzing") and status
        ),
        timeout=60,
        what="the canary at its first step",
    )
    assert found["gate"]["verdict"] == "passed"
    assert found["gate"]["cleared"] is True
    assert found["gate"]["runId"] == "0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("annotations", "event", "reason"),
    [
        # The evaluator's failure: a threshold not met (exit 0: a verdict is the Job's success).
        (
            {TERMINATION_MESSAGE_ANNOTATION: verdict(evaluator.FAILED, evaluator.REASON_FAILED, ok=False)},
            "GateFailed",
            "ThresholdsNotMet",
        ),
        # The evaluator could not judge (exit 1).
        (
            {
                TERMINATION_MESSAGE_ANNOTATION: evaluator.encode(
                    evaluator.Report(evaluator.ERROR, evaluator.MISSING_COLUMN)
                ).decode(),
                EXIT_CODE_ANNOTATION: "1",
            },
            "GateError",
            "MissingColumn",
        ),
        # A Job that exits 0 without a verdict: never a pass.
        ({}, "GateError", "EvaluatorKilled"),
    ],
    ids=["threshold-not-met", "missing-column", "no-verdict"],
)
def test_a_gate_that_does_not_pass_ends_the_run_before_any_request(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    annotations: dict[str, str],
    event: str,
    reason: str,
) -> None:
    register_version(mlflow_server.url, model_name, variant="v1", alias="production")
    v2 = register_version(mlflow_server.url, model_name, variant="v2")
    kube.apply(gated(mlflow_server.url, model_name, annotations, onAbort="removeAlias"), namespace=namespace)
    wait_for(lambda: kube.get("deployment", f"{NAME}-production", namespace), timeout=60, what="production")

    registry.set_registered_model_alias(model_name, "canary", v2)
    gate_job(kube, namespace)
    events = wait_events(kube, namespace, NAME, event, timeout=60)
    assert [message for _, found, message in events if found == event], events
    record = wait_for(
        lambda: ((kube.get("modeldeployment", NAME, namespace) or {}).get("status") or {}).get("lastCanary"),
        timeout=30,
        what="the run's record",
    )
    assert record["phase"] == "Aborted"
    assert record["gate"]["reason"] == reason
    # onAbort removeAlias: @canary goes in MLflow, and the version never had a pod.
    wait_for(
        lambda: "canary" not in registry.get_registered_model(model_name).aliases,
        timeout=30,
        what="@canary removed",
    )
    assert pods_of(kube, namespace, v2) == []
    assert kube.get("deployment", f"{NAME}-canary", namespace) is None
