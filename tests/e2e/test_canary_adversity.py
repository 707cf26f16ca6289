"""The watched canary on a bad day, end to end: humans moving aliases while the operator promotes or
aborts, a metrics source that fails or says nothing of the canary, the registry down while a
measurement fails, the spec edited under a run, a step that holds for a long time, spec.replicas 0
under the Gateway API router, and the progress deadline.

The real control plane (kwok pods), the session's MLflow server and the operator as a process. kwok's
pods serve no metrics, so every analysis reads a scripted Prometheus on loopback
(support/prometheus_script.py) whose answers the test sets per model: each adversity is exact and
happens when the test says. What is asserted is what a user sees: status.canary and
status.lastCanary, conditions, events, and the aliases and tags in MLflow.

Two of them found operator bugs, fixed since: a resumed (or re-weighted) step went unmeasured until
its end, and the outcome of a run aborted during an outage was never tagged when @canary moved
meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    REPO,
    RUN,
    Deploy,
    Kube,
    available_at,
    condition,
    model_deployment,
    ready_at,
    registered,
    wait_condition,
    wait_events,
    wait_for,
)
from mlflow import MlflowClient

from localcluster import READY_DELAY_ANNOTATION, LocalCluster
from mlflowserver import MlflowServer, free_port
from operatorprocess import OperatorProcess, Samples
from support.prometheus_script import (
    FAILING,
    FEW,
    HANG_UP,
    NO_CANARY_SAMPLES,
    PASSING,
    SERVER_ERROR,
    ScriptedPrometheus,
    errors,
)

NAME = "sentiment"
ENDED = ("Aborted", "Succeeded")


@pytest.fixture(scope="module")
def prometheus() -> Iterator[ScriptedPrometheus]:
    with ScriptedPrometheus() as server:
        yield server


# ------------------------------------------------------------------------------------ reading


def resource_of(kube: Kube, namespace: str, name: str = NAME) -> dict[str, Any]:
    return kube.get("mdep", name, namespace) or {}


def run_of(resource: dict[str, Any]) -> dict[str, Any]:
    """The canary run status describes: status.canary while it runs, status.lastCanary once it ended
    (status.canary keeps only the phase of an ended run while its pods drain)."""
    status = resource.get("status", {})
    running: dict[str, Any] = status.get("canary") or {}
    if running.get("phase") in (None, *ENDED):
        return status.get("lastCanary") or running
    return running


def wait_run(
    kube: Kube,
    namespace: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    *,
    name: str = NAME,
    timeout: float = 60,
) -> dict[str, Any]:
    """The resource once `check` holds for its canary run, in a status of the current generation."""

    def seen() -> dict[str, Any] | None:
        resource = kube.get("mdep", name, namespace)
        if resource is None:
            return None
        current = resource.get("status", {}).get("observedGeneration") == resource["metadata"]["generation"]
        return resource if current and check(run_of(resource)) else None

    return wait_for(seen, timeout=timeout, what=f"{name}: {what}")


def aliases(registry: MlflowClient, model: str) -> dict[str, str]:
    return dict(registry.get_registered_model(model).aliases)


def tags(registry: MlflowClient, model: str, version: str) -> dict[str, str]:
    return dict(registry.get_model_version(model, version).tags)


def stays(check: Callable[[], bool], *, seconds: float, what: str) -> None:
    """`check` holds every time it is asked for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        time.sleep(0.25)


def reasons_of(kube: Kube, namespace: str, name: str = NAME) -> list[str]:
    return [reason for _, reason, _ in kube.events(namespace, name)]


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


def alias_writes(operator: OperatorProcess) -> float:
    """Alias changes the operator made in a registry (promotions, @canary removals)."""
    return metric(operator.metrics(), "aliasroll_registry_writes_total", kind="alias", outcome="written")


def passes(operator: OperatorProcess) -> float:
    return metric(operator.metrics(), "aliasroll_passes_total")


def analysis(prometheus: ScriptedPrometheus, **settings: Any) -> dict[str, Any]:
    """spec.canary.analysis reading the scripted Prometheus: a 5xx share above 1% fails."""
    return {
        "interval": "1s",
        "errorRate": {"maxPercent": 1},
        "prometheus": {"address": prometheus.url},
        **settings,
    }


def ready_delay(delay: str) -> dict[str, Any]:
    """spec.serving making every pod take `delay` to be Ready (kwok), as real pods take time."""
    return {"podTemplate": {"metadata": {"annotations": {READY_DELAY_ANNOTATION: delay}}}}


# ------------------------------------------------------------------------------------ 1: humans win


def test_a_human_moving_production_back_during_the_promotion_calls_it_off(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """The operator moved @production to the canary's version and production is rolling to it; a
    human moves @production back. The operator calls its promotion off and never writes again."""
    written = alias_writes(operator)
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=2,
        canary={"alias": "canary", "steps": [{"weight": 50, "duration": "1s"}], "promotion": "auto"},
        # Production's roll to the canary's version takes seconds: the human moves within them.
        serving=ready_delay("4s"),
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")

    wait_for(
        lambda: aliases(registry, model_name).get("production") == "2",
        timeout=60,
        interval=0.05,
        what="the operator's move of @production to 2",
    )
    registry.set_registered_model_alias(model_name, "production", "1")  # a human: "not yet"

    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "AwaitingPromotion" and "called off" in run.get("message", ""),
        "the promotion called off",
    )
    run = run_of(resource)
    assert run["version"] == "2"
    assert "aliasWrite" not in run, run
    assert "was moved to version 1 while the operator was promoting it" in run["message"], run
    events = wait_events(kube, namespace, NAME, "PromotionCalledOff")
    called_off = [message for _, reason, message in events if reason == "PromotionCalledOff"]
    assert len(called_off) == 1, events
    assert "move @production to version 2 to promote it" in called_off[0], events
    # Production goes back to 1 with the canary beside it, and MLflow keeps the human's value.
    wait_for(lambda: ready_at(kube, namespace, NAME, "1", "2"), timeout=60, what="production back at 1")
    stays(
        lambda: aliases(registry, model_name).get("production") == "1",
        seconds=4,
        what="@production at the human's version",
    )
    assert alias_writes(operator) - written == 1, "the operator moved @production once, never again"
    seen = reasons_of(kube, namespace)
    assert seen.count("AliasMoved") == 1, seen
    assert run_of(resource_of(kube, namespace)).get("phase") == "AwaitingPromotion"


def test_a_human_moving_production_during_the_run_leaves_the_promotion_to_them(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """@production moves to another version (a hotfix) before the last step passes: with promotion
    auto the run still ends in AwaitingPromotion, and @production stays where the human put it."""
    written = alias_writes(operator)
    steps = [{"weight": 25, "duration": "2s"}, {"weight": 50, "duration": "2s"}]
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={"alias": "canary", "steps": steps, "promotion": "auto"},
    )
    deploy(manifest, versions=3, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("stepIndex") == 0 and bool(run.get("stepStartedAt")),
        "step 1 under way",
    )
    registry.set_registered_model_alias(model_name, "production", "3")  # the hotfix

    resource = wait_run(
        kube, namespace, lambda run: run.get("phase") == "AwaitingPromotion", "every step passed"
    )
    run = run_of(resource)
    assert (run["version"], run["step"]) == ("2", "2/2"), run
    assert "moved from version 1 to 3 during the run" in run["message"], run
    assert "move @production to version 2 to promote it" in run["message"], run
    wait_events(kube, namespace, NAME, "AwaitingPromotion")
    wait_for(lambda: ready_at(kube, namespace, NAME, "3", "2"), timeout=60, what="production at 3")
    stays(
        lambda: aliases(registry, model_name).get("production") == "3",
        seconds=3,
        what="@production at the human's version",
    )
    assert alias_writes(operator) == written, "the operator wrote no alias"
    seen = reasons_of(kube, namespace)
    assert "CanaryPromoting" not in seen, seen
    assert "AliasMoved" not in seen, seen


# ------------------------------------------------------------------------------------ 2: no pass unmeasured


def test_a_step_holds_without_a_passing_measurement_taken_within_it(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    """Step 1 passed; during step 2 Prometheus fails (HTTP 500), then hangs up, then has no sample of
    the canary: step 2 holds and says why and since when, nothing counts as a failure, nothing is
    promoted; once a measurement passes within the step, the run goes on to its promotion."""
    prometheus.set(model_name, PASSING)
    steps = [{"weight": 25, "duration": "2s"}, {"weight": 50, "duration": "2s"}]
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": steps,
            # One failed measurement would abort: the holds below count none.
            "analysis": analysis(prometheus, interval="2s", failureLimit=1),
            "promotion": "auto",
        },
        # Step 2's weight takes a new canary pod 2 s to be Ready: its clock starts after that.
        serving=ready_delay("2s"),
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    # Step 1 passed: step 2's weight is not in place yet, so no measurement lies within it.
    wait_run(kube, namespace, lambda run: run.get("stepIndex") == 1, "step 1 passed", timeout=90)
    prometheus.set(model_name, SERVER_ERROR)

    def holding(*why: str) -> Callable[[dict[str, Any]], bool]:
        return lambda run: (
            run.get("message", "").startswith("holding step 2: ")
            and any(reason in run.get("message", "") for reason in why)
        )

    # Said in the operator's words (the status and Prometheus' error type), never the answer's text.
    resource = wait_run(kube, namespace, holding("(HTTP 500, internal)"), "step 2 holding on HTTP 500")
    run = run_of(resource)
    assert (run["phase"], run["stepIndex"], run["analysis"]["failures"]) == ("Analyzing", 1, 0), run
    assert "could not read metrics" in run["message"], run
    assert "scripted failure" not in json.dumps(run), run
    waiting_since = run["waitingSince"]
    assert waiting_since >= run["stepStartedAt"], run

    prometheus.set(model_name, HANG_UP)
    resource = wait_run(
        kube,
        namespace,
        holding("unreachable", "broke off its answer"),
        "step 2 holding, Prometheus hanging up",
    )
    run = run_of(resource)
    assert (run["phase"], run["stepIndex"], run["analysis"]["failures"]) == ("Analyzing", 1, 0), run
    assert run["waitingSince"] == waiting_since, "the wait goes on from when it began"

    # Production's samples, none of the canary's: no canary traffic is known, Inconclusive.
    prometheus.set(model_name, NO_CANARY_SAMPLES)
    resource = wait_run(
        kube,
        namespace,
        lambda run: (
            run.get("analysis", {}).get("verdict") == "Inconclusive"
            and run["analysis"].get("windowStart", "") >= run.get("stepStartedAt", "~")
        ),
        "an Inconclusive measurement within step 2",
    )
    run = run_of(resource)
    assert (run["phase"], run["stepIndex"], run["analysis"]["failures"]) == ("Analyzing", 1, 0), run
    assert "counted as no canary traffic" in json.dumps(run), run
    stays(
        lambda: run_of(resource_of(kube, namespace)).get("analysis", {}).get("verdict") != "Passed",
        seconds=3,
        what="no Passed verdict without canary samples",
    )
    assert aliases(registry, model_name)["production"] == "1"
    assert "CanaryAborted" not in reasons_of(kube, namespace)
    assert condition(resource, "CanaryHealthy") != ("False", "AnalysisFailed")

    # A measurement that passes within step 2: the run goes on, and promotes.
    prometheus.set(model_name, PASSING)
    wait_for(
        lambda: aliases(registry, model_name).get("production") == "2",
        timeout=60,
        what="@production moved to 2 once step 2 passed",
    )


# ------------------------------------------------------------------------------------ 3: registry outage


def test_a_failing_measurement_aborts_during_a_registry_outage(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    """MLflow is down; the canary answers 40% 5xx; failureLimit 1: the run aborts all the same, and
    the outage adds no passes of its own. The outcome tags follow once MLflow is back."""
    prometheus.set(model_name, PASSING)
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        registry={"trackingUri": mlflow_server.url, "pollInterval": "5s"},
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "1h"}],
            "analysis": analysis(prometheus, interval="2s", failureLimit=1),
        },
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Analyzing" and run.get("analysis", {}).get("verdict") == "Passed",
        "a passing measurement",
    )

    mlflow_server.stop()
    try:
        wait_condition(
            kube, namespace, NAME, "RegistryReachable", ("False", "RegistryUnreachable"), timeout=30
        )
        prometheus.set(model_name, errors(40))
        resource = wait_run(
            kube, namespace, lambda run: run.get("phase") == "Aborted", "the run aborted", timeout=30
        )
        record = resource["status"].get("lastCanary") or {}
        assert (record.get("version"), record.get("phase")) == ("2", "Aborted"), resource["status"]
        assert "aborted after 1 failed measurement" in record["message"], record
        assert "40.00%" in record["message"], record
        events = wait_events(kube, namespace, NAME, "CanaryAborted")
        assert any("40.00%" in message for _, reason, message in events if reason == "CanaryAborted")
        assert condition(resource, "RegistryReachable") == ("False", "RegistryUnreachable")

        # Still down: the resource is passed on its own timer (pollInterval 5s), not every second.
        wait_for(
            lambda: kube.get("deployment", f"{NAME}-canary", namespace) is None,
            timeout=30,
            what="the aborted canary's pods gone",
        )
        time.sleep(2)  # the last pass of the drain is over
        before, started = passes(operator), time.monotonic()
        time.sleep(10)
        during = passes(operator) - before
        elapsed = time.monotonic() - started
        assert during <= elapsed / 5 + 2, f"{during:.0f} passes in {elapsed:.1f} s of outage"
        assert condition(resource_of(kube, namespace), "RegistryReachable") == (
            "False",
            "RegistryUnreachable",
        )
    finally:
        mlflow_server.start()

    # Back: the abort's outcome lands on the version in MLflow; @canary stays (keepAlias).
    wait_for(
        lambda: tags(registry, model_name, "2").get("aliasroll.io/canary.outcome") == "aborted",
        timeout=60,
        what="the outcome tag aborted on version 2",
    )
    assert aliases(registry, model_name).get("canary") == "2"
    assert run_of(resource_of(kube, namespace))["phase"] == "Aborted"


# ------------------------------------------------------------------------------------ 5: spec edits


def test_steps_shortened_below_the_current_step_promote(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    steps = [
        {"weight": 20, "duration": "1s"},
        {"weight": 40, "duration": "1s"},
        {"weight": 60, "duration": "1h"},
    ]
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=5,
        canary={"alias": "canary", "steps": steps, "promotion": "auto"},
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("stepIndex") == 2 and bool(run.get("stepStartedAt")),
        "step 3 under way",
        timeout=90,
    )

    manifest["spec"]["canary"]["steps"] = steps[:2]  # the run is past every step left
    kube.apply(manifest, namespace=namespace)
    wait_for(
        lambda: aliases(registry, model_name).get("production") == "2",
        timeout=60,
        what="@production moved to 2",
    )
    resource = wait_run(
        kube, namespace, lambda run: run.get("phase") == "Succeeded", "the run Succeeded", timeout=60
    )
    assert run_of(resource)["step"] == "2/2"
    wait_events(kube, namespace, NAME, "CanaryPromoting", "AliasMoved")


def test_analysis_added_to_a_running_canary_measures_it_and_it_goes_on(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    prometheus.set(model_name, PASSING)
    steps = [{"weight": 25, "duration": "4s"}, {"weight": 50, "duration": "2s"}]
    manifest = model_deployment(
        NAME, model_name, mlflow_server.url, replicas=4, canary={"alias": "canary", "steps": steps}
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Progressing" and bool(run.get("stepStartedAt")),
        "step 1 under way, timed alone",
    )

    manifest["spec"]["canary"]["analysis"] = analysis(prometheus)
    kube.apply(manifest, namespace=namespace)
    resource = wait_run(kube, namespace, lambda run: run.get("phase") == "Analyzing", "Analyzing")
    assert run_of(resource)["analysis"]["failures"] == 0
    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "AwaitingPromotion",
        "every step passed, measured",
        timeout=60,
    )
    run = run_of(resource)
    assert (run["step"], run["analysis"]["verdict"]) == ("2/2", "Passed"), run
    assert "every step passed" in run["message"], run


def test_steps_to_a_fixed_weight_and_back_restart_at_step_one(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    steps = [{"weight": 20, "duration": "3s"}, {"weight": 50, "duration": "1h"}]
    manifest = model_deployment(
        NAME, model_name, mlflow_server.url, replicas=10, canary={"alias": "canary", "steps": steps}
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("stepIndex") == 1 and bool(run.get("stepStartedAt")),
        "step 2 under way",
    )

    # A fixed weight: the run waits there for a human.
    manifest["spec"]["canary"] = {"alias": "canary", "weight": 30}
    kube.apply(manifest, namespace=namespace)
    resource = wait_run(
        kube, namespace, lambda run: run.get("phase") == "AwaitingPromotion", "AwaitingPromotion at 30%"
    )
    run = run_of(resource)
    assert "move @production to version 2 to promote it" in run["message"], run
    assert "step" not in run, run
    wait_for(
        lambda: resource_of(kube, namespace)["status"]["traffic"]["canaryWeight"] == 30,
        timeout=30,
        what="30% of requests to the canary",
    )
    weighted_since = run["stepStartedAt"]

    # Steps again: the run starts over at step 1, whose weight is put in place first.
    manifest["spec"]["canary"] = {"alias": "canary", "steps": steps}
    kube.apply(manifest, namespace=namespace)
    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Progressing" and bool(run.get("stepStartedAt")),
        "step 1 under way again",
    )
    run = run_of(resource)
    assert (run["stepIndex"], run["step"]) == (0, "1/2"), run
    assert run["stepStartedAt"] >= weighted_since, run
    wait_run(
        kube,
        namespace,
        lambda run: run.get("stepIndex") == 1 and bool(run.get("stepStartedAt")),
        "step 2 again, after step 1's time",
    )
    assert aliases(registry, model_name)["production"] == "1"


# ------------------------------------------------------------------------------------ 6: a held step rests


@pytest.fixture
def own_operator(
    cluster: LocalCluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator watching only the test's namespace, so its pass counter counts this test's
    resource alone; the session's operator (every namespace) is stopped meanwhile."""
    token = cluster.mint_token(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=3600)
    kubeconfig = cluster.write_kubeconfig_for_token(tmp_path / "kubeconfig", token)
    own = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=REPO / ".work" / f"{RUN}-operator-adversity.log",
        verbose=True,
        args=["--namespace", namespace],
        env={
            "ALIASROLL_SERVING_IMAGE": "aliasroll/serving:e2e",
            "ALIASROLL_REGISTRY_TIMEOUT": "2",
            "ALIASROLL_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    own.log_path.unlink(missing_ok=True)
    operator.stop()
    try:
        own.start()
        yield own
    finally:
        own.stop()
        operator.ensure_running()
    crashes = [line for line in own.log_path.read_text().splitlines() if "reconcile pass failed" in line]
    assert not crashes, "the operator crashed in passes:\n" + "\n".join(crashes[:5])


def test_a_held_step_is_passed_once_an_interval_not_every_second(
    kube: Kube,
    own_operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    """Too little canary traffic: the step's time is up and it holds, Inconclusive. Passes come with
    the measurements (every 5 s: the pass that finds one due starts the reading beside it, and the
    reading's end wakes the pass that takes it), not every second."""
    prometheus.set(model_name, FEW)
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        # The registry's own timer is out of the picture: its poller wakes the resource on a move.
        registry={"trackingUri": mlflow_server.url, "pollInterval": "60s"},
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "1s"}],
            "analysis": analysis(prometheus, interval="5s"),
        },
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: (
            run.get("message", "").startswith("holding step 1: ")
            and run.get("analysis", {}).get("verdict") == "Inconclusive"
        ),
        "step 1 holding, Inconclusive",
    )
    time.sleep(1)  # the records' writes that follow a rollout are over
    before, asked, started = passes(own_operator), len(prometheus.asked(model_name)), time.monotonic()
    time.sleep(20)
    elapsed = time.monotonic() - started
    ran = passes(own_operator) - before
    measured = len(prometheus.asked(model_name)) - asked
    assert 3 <= measured <= 5, f"{measured} measurements in {elapsed:.1f} s at an interval of 5 s"
    assert ran <= 2 * (elapsed / 5) + 3, f"{ran:.0f} passes in {elapsed:.1f} s of a held step"
    run = run_of(resource_of(kube, namespace))
    assert (run["phase"], run["stepIndex"], run["analysis"]["verdict"]) == (
        "Analyzing",
        0,
        "Inconclusive",
    ), run


def test_a_resumed_canary_is_measured_every_interval_again(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    """Paused, then resumed at the same weight: the step starts again and is measured every interval
    from then on, so a canary that fails after the resume is aborted within an interval or two, not
    at the end of its step."""
    prometheus.set(model_name, PASSING)
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "60s"}],
            "analysis": analysis(prometheus, interval="2s", failureLimit=1),
        },
    )
    deploy(manifest, versions=2, ready=None, production="1", canary="2")
    wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Analyzing" and run.get("analysis", {}).get("verdict") == "Passed",
        "a passing measurement",
    )
    manifest["spec"]["suspend"] = True
    kube.apply(manifest, namespace=namespace)
    wait_run(kube, namespace, lambda run: run.get("phase") == "Paused", "Paused")
    time.sleep(3)  # more than an interval since the last reading

    prometheus.set(model_name, FAILING)
    asked = len(prometheus.asked(model_name))
    manifest["spec"]["suspend"] = False
    kube.apply(manifest, namespace=namespace)
    resumed = wait_run(
        kube, namespace, lambda run: run.get("phase") == "Analyzing", "Analyzing again, step 1 restarted"
    )
    assert run_of(resumed)["analysis"]["failures"] == 0
    # Failing from the resume on, failureLimit 1, interval 2 s: aborted within a few seconds.
    wait_for(
        lambda: len(prometheus.asked(model_name)) > asked,
        timeout=8,
        what="a measurement after the resume",
    )
    wait_run(kube, namespace, lambda run: run.get("phase") == "Aborted", "the run aborted", timeout=8)


# ------------------------------------------------------------------------------------ 8: replicas 0


def route_weights(kube: Kube, namespace: str, name: str) -> dict[str, int] | None:
    route = kube.get("httproute", name, namespace)
    if route is None:
        return None
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def asked_pods(kube: Kube, namespace: str, name: str) -> dict[str, int]:
    return {
        deployment["metadata"]["name"]: int(deployment["spec"]["replicas"])
        for deployment in kube.list("deployments", namespace)
        if deployment["metadata"]["name"].startswith(f"{name}-")
    }


def test_gateway_api_at_zero_replicas_keeps_no_canary_pod_and_weights_no_empty_backend(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment(
        NAME,
        model_name,
        mlflow_server.url,
        replicas=4,
        canary={"alias": "canary", "weight": 25},
        traffic={"router": "gatewayAPI"},
    )
    deploy(manifest, versions=2, ready=("1", "2"), production="1", canary="2")
    assert route_weights(kube, namespace, NAME) == {f"{NAME}-production": 75, f"{NAME}-canary": 25}

    # Scaled to zero mid-canary; and another resource created at zero with its canary.
    manifest["spec"]["replicas"] = 0
    kube.apply(manifest, namespace=namespace)
    cold = model_deployment(
        "cold",
        model_name,
        mlflow_server.url,
        replicas=0,
        canary={"alias": "canary", "steps": [{"weight": 50, "duration": "1s"}]},
        traffic={"router": "gatewayAPI"},
    )
    kube.apply(cold, namespace=namespace)

    def at_zero(name: str) -> dict[str, Any] | None:
        resource = resource_of(kube, namespace, name)
        pods = [
            pod
            for pod in kube.list("pods", namespace)
            if pod["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name
        ]
        weights = route_weights(kube, namespace, name)
        if (
            condition(resource, "Ready") == ("True", "ScaledToZero")
            and not pods
            and weights is not None
            and not any(asked_pods(kube, namespace, name).values())
        ):
            return resource
        return None

    wait_for(lambda: at_zero(NAME), timeout=60, what=f"{NAME} at zero pods")
    wait_for(lambda: at_zero("cold"), timeout=60, what="cold at zero pods")

    def nothing_asked() -> bool:
        for name in (NAME, "cold"):
            weights = route_weights(kube, namespace, name) or {}
            assert not any(weights.values()), f"{name}: a backend without pods is weighted: {weights}"
            assert not any(asked_pods(kube, namespace, name).values()), asked_pods(kube, namespace, name)
        return True

    stays(nothing_asked, seconds=4, what="no pod asked for, no backend weighted")


# ------------------------------------------------------------------------------------ 9: onAbort removeAlias


class RegistryLink:
    """A TCP forwarder on loopback from the operator to the session's MLflow server (the resource's
    trackingUri is its URL), which the test cuts and restores: the operator loses the registry while
    a human, who reaches MLflow directly, still moves aliases."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """New connections are hung up on, and the open ones are broken."""
        self._open = False
        with self._lock:
            opened, self._sockets = self._sockets, set()
        for sock in opened:
            _hang_up(sock)

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._open:
                _hang_up(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _hang_up(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {source, sink}
            _hang_up(source)
            _hang_up(sink)


def _hang_up(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def registry_link(mlflow_server: MlflowServer) -> Iterator[RegistryLink]:
    link = RegistryLink(mlflow_server.url)
    try:
        yield link
    finally:
        link.close()


def removing(prometheus: ScriptedPrometheus, tracking_uri: str, model: str) -> dict[str, Any]:
    return model_deployment(
        NAME,
        model,
        tracking_uri,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "1h"}],
            "analysis": analysis(prometheus, failureLimit=1),
            "onAbort": "removeAlias",
        },
    )


def test_an_aborted_canary_loses_its_alias_after_its_outcome_is_recorded(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    deploy: Deploy,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    prometheus.set(model_name, FAILING)
    deploy(
        removing(prometheus, mlflow_server.url, model_name),
        versions=2,
        ready=None,
        production="1",
        canary="2",
    )

    wait_for(
        lambda: "canary" not in aliases(registry, model_name),
        timeout=60,
        interval=0.1,
        what="@canary removed",
    )
    # The evidence first: by the time @canary is gone, version 2 says how its canary ended.
    recorded = tags(registry, model_name, "2")
    assert recorded.get("aliasroll.io/canary.outcome") == "aborted", recorded
    assert recorded.get("aliasroll.io/canary.deployment") == f"{namespace}/{NAME}", recorded
    assert "aborted after 1 failed measurement" in recorded.get("aliasroll.io/canary.summary", ""), recorded
    assert "aliasroll.io/canary.analysis.errorRate" in recorded, recorded

    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Aborted" and run.get("aliasWrite") == "Made",
        "the abort recorded, its alias removed",
    )
    record = resource["status"]["lastCanary"]
    assert (record["version"], record["phase"]) == ("2", "Aborted"), record
    assert condition(resource, "CanaryHealthy") == ("False", "CanaryAborted")
    wait_events(kube, namespace, NAME, "CanaryAborted", "AliasRemoved")
    assert aliases(registry, model_name) == {"production": "1"}


def abort_unreachable_then_move_canary(
    kube: Kube,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    link: RegistryLink,
    namespace: str,
    model: str,
) -> None:
    """Version 2's run aborts (onAbort removeAlias) while the operator cannot reach MLflow, so the
    removal of @canary waits; meanwhile a human moves @canary to version 3; then the operator reaches
    MLflow again. Version 3's own run holds (too little traffic): nothing of its own moves @canary."""
    registered(registry, model, 3, production="1", canary="2")
    prometheus.set(model, PASSING)
    kube.apply(removing(prometheus, link.url, model), namespace=namespace)
    wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Analyzing" and run.get("analysis", {}).get("verdict") == "Passed",
        "a passing measurement",
    )

    link.cut()
    wait_condition(kube, namespace, NAME, "RegistryReachable", ("False", "RegistryUnreachable"), timeout=30)
    prometheus.set(model, FAILING)
    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Aborted" and run.get("aliasWrite") in ("Planned", "Attempted"),
        "the run aborted, @canary's removal pending",
        timeout=30,
    )
    assert resource["status"]["lastCanary"]["version"] == "2"
    registry.set_registered_model_alias(model, "canary", "3")  # a human, straight to MLflow
    prometheus.set(model, FEW)
    link.restore()
    wait_condition(kube, namespace, NAME, "RegistryReachable", ("True", "RegistryAnswered"), timeout=30)
    wait_for(
        lambda: (resource_of(kube, namespace)["status"].get("canary") or {}).get("version") == "3",
        timeout=30,
        what="version 3's canary run",
    )


def test_an_aborted_canary_whose_alias_a_human_moved_keeps_the_humans_alias(
    kube: Kube,
    operator: OperatorProcess,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    registry_link: RegistryLink,
    namespace: str,
    model_name: str,
) -> None:
    removed = alias_writes(operator)
    abort_unreachable_then_move_canary(kube, registry, prometheus, registry_link, namespace, model_name)
    stays(
        lambda: aliases(registry, model_name).get("canary") == "3",
        seconds=4,
        what="@canary at the human's version",
    )
    assert "AliasRemoved" not in reasons_of(kube, namespace)
    assert alias_writes(operator) == removed, "the operator removed no alias"
    spans = resource_of(kube, namespace)["status"]["history"]
    assert [(s["version"], s.get("outcome")) for s in spans if s["track"] == "canary"] == [
        ("2", "Aborted"),
        ("3", None),
    ], spans


def test_the_outcome_of_a_canary_aborted_during_an_outage_is_recorded_after_a_human_moved_its_alias(
    kube: Kube,
    operator: OperatorProcess,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    registry_link: RegistryLink,
    namespace: str,
    model_name: str,
) -> None:
    abort_unreachable_then_move_canary(kube, registry, prometheus, registry_link, namespace, model_name)
    # README: on abort the version gets aliasroll.io/canary.outcome, and MLflow keeps it for good.
    wait_for(
        lambda: tags(registry, model_name, "2").get("aliasroll.io/canary.outcome") == "aborted",
        timeout=30,
        interval=1,
        what="the outcome tag aborted on version 2",
    )


# ------------------------------------------------------------------------------------ progressDeadline


def test_a_canary_inconclusive_past_its_progress_deadline_is_aborted(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    namespace: str,
    model_name: str,
) -> None:
    """Two canaries of one version, too little traffic for a verdict: the one with a 10 s deadline is
    aborted once it has waited that long; the one left at the default (30m) waits on."""
    registered(registry, model_name, 2, production="1", canary="2")
    prometheus.set(model_name, FEW)

    def canary(**settings: Any) -> dict[str, Any]:
        return {
            "alias": "canary",
            "steps": [{"weight": 50, "duration": "1s"}],
            "analysis": analysis(prometheus),
            **settings,
        }

    hurried = model_deployment(
        "hurried", model_name, mlflow_server.url, replicas=2, canary=canary(progressDeadline="10s")
    )
    patient = model_deployment("patient", model_name, mlflow_server.url, replicas=2, canary=canary())
    kube.apply(hurried, namespace=namespace)
    kube.apply(patient, namespace=namespace)
    shown = kube.cluster.kubectl("get", "mdep", "patient", "-n", namespace, "-o", "yaml").stdout
    assert "progressDeadline: 30m" in shown, shown

    wait_run(
        kube,
        namespace,
        lambda run: run.get("message", "").startswith("holding step 1: ") and bool(run.get("waitingSince")),
        "hurried holding step 1",
        name="hurried",
    )
    resource = wait_run(
        kube,
        namespace,
        lambda run: run.get("phase") == "Aborted",
        "hurried aborted by its deadline",
        name="hurried",
        timeout=40,
    )
    record = resource["status"]["lastCanary"]
    assert record["version"] == "2", record
    assert "no progress for 10s (spec.canary.progressDeadline)" in record["message"], record
    assert "waiting for a conclusive measurement" in record["message"], record
    events = wait_events(kube, namespace, "hurried", "CanaryAborted")
    assert any("progressDeadline" in message for _, reason, message in events if reason == "CanaryAborted")
    wait_for(
        lambda: kube.get("deployment", "hurried-canary", namespace) is None,
        timeout=30,
        what="hurried's canary pods gone",
    )

    run = run_of(resource_of(kube, namespace, "patient"))
    assert (run["phase"], run["analysis"]["verdict"]) == ("Analyzing", "Inconclusive"), run
    assert run["message"].startswith("holding step 1: "), run
    assert "CanaryAborted" not in reasons_of(kube, namespace, "patient")
    assert available_at(kube, namespace, "patient-canary", "2")
