"""The watched canary against the real API server and a real MLflow registry (kwok pods): the CRD
refuses what cannot work, steps run in order and an automatic promotion moves @production in MLflow
and tags the versions; a metrics source that cannot be read holds the step and never fails it.

Analysis verdicts on real traffic are proven on real pods (tests/e2e_real/test_canary_analysis.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from harness import Kube, model_deployment, ready_at, registered, wait_for
from mlflow import MlflowClient

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess

QUICK_STEPS = [{"weight": 20, "duration": "2s"}, {"weight": 50, "duration": "2s"}]


def with_canary(canary: dict[str, Any]) -> dict[str, Any]:
    body = model_deployment("bad", "m", "http://mlflow:5000", replicas=4, canary=canary)
    return copy.deepcopy(body)


BAD = [
    (
        "weight and steps",
        with_canary({"weight": 10, "steps": QUICK_STEPS}),
        "spec.canary needs either weight (a fixed share of requests) or steps, not both",
    ),
    ("neither weight nor steps", with_canary({"alias": "canary"}), "needs either weight"),
    (
        "auto promotion of a fixed weight",
        with_canary({"weight": 10, "promotion": "auto"}),
        "auto needs steps",
    ),
    (
        "step weight 0",
        with_canary({"steps": [{"weight": 0, "duration": "1m"}]}),
        "spec.canary.steps[].weight must be between 1 and 100",
    ),
    (
        "step duration not a duration",
        with_canary({"steps": [{"weight": 5, "duration": "two minutes"}]}),
        "spec.canary.steps[].duration must be a duration such as 30s",
    ),
    (
        "analysis without a bound",
        with_canary({"steps": QUICK_STEPS, "analysis": {"interval": "10s"}}),
        "spec.canary.analysis needs errorRate and/or latencyP99 limits",
    ),
    (
        "latency bound with nothing set",
        with_canary({"steps": QUICK_STEPS, "analysis": {"latencyP99": {}}}),
        "latencyP99 needs maxMilliseconds and/or maxRatio",
    ),
    (
        "a ratio below 1",
        with_canary({"steps": QUICK_STEPS, "analysis": {"latencyP99": {"maxRatio": 0.5}}}),
        "spec.canary.analysis.latencyP99.maxRatio",
    ),
    (
        "unknown promotion",
        with_canary({"steps": QUICK_STEPS, "promotion": "sometimes"}),
        'supported values: "auto", "manual"',
    ),
    (
        "prometheus address not a URL",
        with_canary(
            {
                "steps": QUICK_STEPS,
                "analysis": {"errorRate": {"maxPercent": 1}, "prometheus": {"address": "prom"}},
            }
        ),
        "prometheus.address must be an http:// or https:// URL",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD, ids=[case[0] for case in BAD])
def test_the_crd_refuses_a_canary_that_cannot_work(
    kube: Kube, namespace: str, case: str, body: dict[str, Any], message: str
) -> None:
    result = kube.try_apply(body, namespace=namespace)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, f"{case}: {result.stderr}"


def test_steps_then_automatic_promotion_in_mlflow(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    registered(registry, model_name, 3, production="2")
    manifest = model_deployment(
        "sentiment",
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={"alias": "canary", "steps": QUICK_STEPS, "promotion": "auto"},
    )
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "2"), timeout=60, what="Ready at 2")
    registry.set_registered_model_alias(model_name, "canary", "3")

    # The operator moves @production itself once both steps passed; production then rolls to 3.
    wait_for(
        lambda: registry.get_registered_model(model_name).aliases.get("production") == "3",
        timeout=90,
        what="@production moved to 3 by the operator",
    )

    def succeeded() -> dict[str, Any] | None:
        # Ready at 3 with no canary: status names none once its pods are gone; the run's record is
        # status.lastCanary.
        resource = ready_at(kube, namespace, "sentiment", "3")
        phase = ((resource or {}).get("status", {}).get("lastCanary") or {}).get("phase")
        return resource if phase == "Succeeded" else None

    resource = wait_for(succeeded, timeout=90, what="production at 3, the canary run Succeeded")
    record = resource["status"]["lastCanary"]
    assert (record["version"], record["step"]) == ("3", "2/2")
    assert "canary" not in resource["status"]
    assert kube.get("deployment", "sentiment-canary", namespace) is None
    spans = [(span["track"], span["version"], span.get("outcome")) for span in resource["status"]["history"]]
    assert ("canary", "3", "Succeeded") in spans, spans
    # kubectl get reads right: production's version, no canary, no phase.
    row = kube.cluster.kubectl("get", "mdep", "sentiment", "-n", namespace, "--no-headers").stdout.split()
    assert row[:6] == ["sentiment", model_name, "production", "3", "0", "True"], row
    reasons_seen = [reason for _, reason, _ in kube.events(namespace, "sentiment")]
    assert reasons_seen.count("CanaryStep") == 2
    for reason in ("CanaryPromoting", "AliasMoved", "CanaryPromoted"):
        assert reason in reasons_seen, reasons_seen

    # MLflow says how the canary ended and where each version served.
    def tags(version: str) -> dict[str, str]:
        return dict(registry.get_model_version(model_name, version).tags)

    # The tags are written after the rollout, one call each: wait for all of them.
    outcome = ("outcome", "time", "deployment", "summary")
    wait_for(
        lambda: all(f"aliasroll.io/canary.{key}" in tags("3") for key in outcome),
        timeout=60,
        what="the canary's outcome tags",
    )
    assert tags("3")["aliasroll.io/canary.outcome"] == "promoted"
    assert tags("3")["aliasroll.io/canary.deployment"] == f"{namespace}/sentiment"
    served_2 = [
        value
        for key, value in tags("2").items()
        if key.startswith(f"aliasroll.io/served/{namespace}/sentiment/production/")
    ]
    assert len(served_2) == 1
    assert " to 20" in served_2[0], f"production's span of version 2 is closed: {served_2}"
    served_3 = {key.split("/")[-2] for key in tags("3") if key.startswith("aliasroll.io/served/")}
    assert served_3 == {"canary", "production"}

    # The tags are written after the rollouts; once they are, the Recorded condition says so.
    def recorded() -> tuple[str, str] | None:
        current = kube.get("modeldeployment", "sentiment", namespace) or {}
        found = [c for c in current.get("status", {}).get("conditions", ()) if c["type"] == "Recorded"]
        return (found[0]["status"], found[0]["reason"]) if found else None

    wait_for(lambda: recorded() == ("True", "RecordsWritten"), timeout=30, what="Recorded=True")


def test_metrics_that_cannot_be_read_hold_the_step_and_never_fail_it(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    """kwok's pods have addresses nothing answers on: the analysis cannot read them."""
    registered(registry, model_name, 2, production="1", canary="2")
    manifest = model_deployment(
        "sentiment",
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "1s"}],
            "analysis": {"interval": "1s", "failureLimit": 1, "errorRate": {"maxPercent": 1}},
            "promotion": "auto",
        },
    )
    kube.apply(manifest, namespace=namespace)

    def unreadable() -> dict[str, Any] | None:
        resource = kube.get("mdep", "sentiment", namespace) or {}
        canary = resource.get("status", {}).get("canary") or {}
        return resource if "could not read metrics" in canary.get("message", "") else None

    resource = wait_for(unreadable, timeout=90, what="analysis unavailable in status")
    # Several intervals later: still at its step, no failure counted, never promoted.
    wait_for(
        lambda: (
            (kube.get("mdep", "sentiment", namespace) or {})
            .get("status", {})
            .get("canary", {})
            .get("analysis", {})
            .get("readAt")  # a reading that judged nothing: measuredAt stays the last judged one's
            != resource["status"]["canary"]["analysis"].get("readAt")
        ),
        timeout=30,
        what="a later measurement attempt",
    )
    canary = (kube.get("mdep", "sentiment", namespace) or {})["status"]["canary"]
    assert (canary["phase"], canary["analysis"]["failures"], canary["stepIndex"]) == ("Analyzing", 0, 0)
    assert registry.get_registered_model(model_name).aliases["production"] == "1"
