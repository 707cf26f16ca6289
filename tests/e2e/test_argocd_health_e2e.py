"""Argo CD's health of a ModelDeployment (manifests/argocd/health.lua) on the objects the operator
writes: each state is brought about on the local control plane (kwok pods, a real MLflow server, the
operator as a process), the ModelDeployment is read back, and the script's verdict, run by a Lua 5.1
as Argo CD runs it, must be the one expected.

With ALIASROLL_CAPTURE_ARGOCD_TESTDATA=1 each object read is also written, normalised, to
manifests/argocd/testdata/<health>_<state>.yaml and its verdict to manifests/argocd/health_test.yaml:
the test data of the script (tests/unit/artifacts/test_argocd_health.py runs that table), in Argo CD's
own layout for resource health checks. After a change to what the operator writes, run

    ALIASROLL_CAPTURE_ARGOCD_TESTDATA=1 ALIASROLL_E2E_RUN=argocd \\
        .venv/bin/python -m pytest tests/e2e/test_argocd_health_e2e.py

and commit what changed. Normalised: no uid, resourceVersion, managedFields or last-applied
annotation; namespace `ml`, model `sentiment`, the local MLflow and Prometheus URLs as in-cluster
ones; every timestamp moved by the same amount, so that the object's creation is 2026-01-01T10:00:00Z.

kwok's pods answer nothing, so a canary's analysis reads a scripted Prometheus started here
(support/prometheus_script.py), which the operator queries as it would a real one: for each model,
windows that pass, fail (half the canary's answers 5xx) or hold too few canary requests for a verdict.
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from harness import (
    Kube,
    condition,
    model_deployment,
    ready_at,
    registered,
    wait_condition,
    wait_for,
)
from mlflow import MlflowClient

from localcluster import READY_DELAY_ANNOTATION
from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess
from support.argocd_health import ARGOCD, HEALTH_TESTS, TESTDATA, health_tests, run_health
from support.prometheus_script import FAILING, FEW, PASSING, ScriptedPrometheus

CAPTURE = os.environ.get("ALIASROLL_CAPTURE_ARGOCD_TESTDATA") == "1"
# The states captured, in the order health_test.yaml lists them.
STATES = (
    "serving",
    "aliasMovesNotFollowed",
    "scaledToZero",
    "rollingOut",
    "rolloutStalled",
    "nothingToServe",
    "nameConflict",
    "applyFailed",
    "canaryFixedWeight",
    "canaryStep",
    "canaryPaused",
    "canaryAnalysisInconclusive",
    "canaryAnalyzing",
    "canaryAwaitingPromotion",
    "canaryPromoting",
    "canarySucceeded",
    "canaryAnalysisFailed",
    "canaryAborted",
    "canaryAbortedAliasDeleted",
)
HEADER = """\
# Argo CD's test table for health.lua beside it, in the layout of Argo CD's own resource health checks
# (resource_customizations/<group>/<kind>/: health.lua, health_test.yaml, testdata/), so the three can be
# offered upstream as resource_customizations/aliasroll.io/ModelDeployment/ as they are. Every object in
# testdata/ was captured from the operator on a cluster, and every verdict checked against the one
# expected there, by tests/e2e/test_argocd_health_e2e.py (ALIASROLL_CAPTURE_ARGOCD_TESTDATA=1 rewrites
# them); tests/unit/artifacts/test_argocd_health.py runs this table under Lua 5.1. Do not edit by hand.
"""
BASE_TIME = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
WIDE = 10_000  # one line per message in the YAML written


@pytest.fixture(scope="module")
def prometheus() -> Iterator[ScriptedPrometheus]:
    with ScriptedPrometheus() as server:
        yield server


@dataclass(frozen=True)
class Scene:
    """One test's ModelDeployment `sentiment`: where it lives, and the names a capture replaces."""

    kube: Kube
    namespace: str
    model: str
    replacements: tuple[tuple[str, str], ...]

    def get(self) -> dict[str, Any] | None:
        return self.kube.get("mdep", "sentiment", self.namespace)

    def wait(self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60) -> dict[str, Any]:
        """The ModelDeployment once `check` holds for its status of the current generation."""

        def seen() -> dict[str, Any] | None:
            resource = self.get()
            if resource is None:
                return None
            current = (
                resource.get("status", {}).get("observedGeneration") == resource["metadata"]["generation"]
            )
            return resource if current and check(resource) else None

        return wait_for(seen, timeout=timeout, what=what)


@pytest.fixture
def scene(kube: Kube, namespace: str, mlflow_server: MlflowServer, prometheus: ScriptedPrometheus) -> Scene:
    model = f"argocd-health-{uuid.uuid4().hex[:8]}"
    return Scene(
        kube=kube,
        namespace=namespace,
        model=model,
        replacements=(
            (mlflow_server.url, "http://mlflow.mlflow:5000"),
            (prometheus.url, "http://prometheus.monitoring:9090"),
            (model, "sentiment"),
            (namespace, "ml"),
        ),
    )


def canary(resource: dict[str, Any]) -> dict[str, Any]:
    """The canary's run as health.lua reads it: status.canary while it runs; once it ended,
    status.lastCanary where the operator keeps that record apart, else status.canary."""
    status = resource.get("status", {})
    running: dict[str, Any] = status.get("canary") or {}
    if running.get("phase") in (None, "Aborted", "Succeeded"):
        return status.get("lastCanary") or running
    return running


def canary_pods(resource: dict[str, Any]) -> int:
    return int((resource.get("status", {}).get("canary") or {}).get("replicas", 0))


def normalised(resource: dict[str, Any], scene: Scene) -> dict[str, Any]:
    """The object as health_test.yaml's data holds it (see the module's docstring)."""
    obj = copy.deepcopy(resource)
    metadata = obj["metadata"]
    kept = {
        key: metadata[key]
        for key in ("name", "namespace", "generation", "creationTimestamp", "labels")
        if key in metadata
    }
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        kept["annotations"] = annotations
    obj["metadata"] = kept
    shift = BASE_TIME - _time(metadata["creationTimestamp"])

    def text(value: str) -> str:
        for old, new in scene.replacements:
            value = value.replace(old, new)
        return TIMESTAMP.sub(lambda m: (_time(m.group()) + shift).strftime("%Y-%m-%dT%H:%M:%SZ"), value)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {text(key): walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return text(value) if isinstance(value, str) else value

    result: dict[str, Any] = walk(obj)
    return result


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def verdict(scene: Scene, resource: dict[str, Any], state: str, health: str, *said: str) -> None:
    """The script's verdict on the object read must be `health`, its message holding each of `said`;
    with capture on, the object and its verdict become test data."""
    assert state in STATES
    captured = normalised(resource, scene)
    got, message = run_health(captured)
    assert (got, run_health(resource)[0]) == (health, health), f"{state}: {got}: {message}"
    for part in said:
        assert part in message, f"{state}: {message}"
    if CAPTURE:
        _write(state, captured, health, message)


def _write(state: str, obj: dict[str, Any], health: str, message: str) -> None:
    """testdata/<health>_<state>.yaml and its row in health_test.yaml (an earlier capture of the state
    under another health goes)."""
    TESTDATA.mkdir(exist_ok=True)
    for earlier in TESTDATA.glob(f"*_{state}.yaml"):
        earlier.unlink()
    path = TESTDATA / f"{health.lower()}_{state}.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False, width=WIDE, allow_unicode=True))
    input_path = str(path.relative_to(ARGOCD))
    rows = [row for row in health_tests() if _state(row) != state]
    rows.append({"healthStatus": {"status": health, "message": message}, "inputPath": input_path})
    rows.sort(key=lambda row: STATES.index(_state(row)) if _state(row) in STATES else len(STATES))
    HEALTH_TESTS.write_text(
        HEADER + yaml.safe_dump({"tests": rows}, sort_keys=False, width=WIDE, allow_unicode=True)
    )


def _state(row: dict[str, Any]) -> str:
    return str(row["inputPath"]).removeprefix("testdata/").removesuffix(".yaml").split("_", 1)[-1]


def test_serving_suspended_and_scaled_to_zero(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 2, production="1")
    manifest = model_deployment("sentiment", scene.model, mlflow_server.url, replicas=2)
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = wait_for(
        lambda: ready_at(scene.kube, scene.namespace, "sentiment", "1"), timeout=60, what="Ready at 1"
    )
    verdict(scene, resource, "serving", "Healthy", "version 1 serves production")

    manifest["spec"]["suspend"] = True
    scene.kube.apply(manifest, namespace=scene.namespace)
    scene.wait(lambda r: condition(r, "Progressing") == ("False", "Suspended"), "Progressing=False/Suspended")
    registry.set_registered_model_alias(scene.model, "production", "2")
    resource = scene.wait(
        lambda r: "points at 2" in json.dumps(r["status"]["conditions"]), "the move seen, not followed"
    )
    verdict(scene, resource, "aliasMovesNotFollowed", "Suspended", "alias moves are not followed")

    manifest["spec"] |= {"suspend": False, "replicas": 0}
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: (
            condition(r, "Ready") == ("True", "ScaledToZero") and r["status"]["production"]["version"] == "2"
        ),
        "Ready=True/ScaledToZero at 2",
    )
    verdict(scene, resource, "scaledToZero", "Healthy", "spec.replicas is 0")


def test_rolling_out_then_stalled(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 2, production="1", next="2")
    manifest = model_deployment("sentiment", scene.model, mlflow_server.url, replicas=2)
    scene.kube.apply(manifest, namespace=scene.namespace)
    wait_for(lambda: ready_at(scene.kube, scene.namespace, "sentiment", "1"), timeout=60, what="Ready at 1")

    # The alias names version 2, whose pods kwok leaves unready for an hour: the rollout is under way.
    manifest["spec"]["model"]["alias"] = "next"
    manifest["spec"]["serving"] = {
        "podTemplate": {"metadata": {"annotations": {READY_DELAY_ANNOTATION: "1h"}}}
    }
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: (
            condition(r, "Ready") == ("False", "RollingOut") and r["status"]["production"]["version"] == "2"
        ),
        "Ready=False/RollingOut to 2",
    )
    verdict(scene, resource, "rollingOut", "Progressing", "production rolling to version 2")

    # A pod of version 2 exits, as a kubelet would report it: the rollout stalls.
    pod = wait_for(
        lambda: next(iter(scene.kube.list("pods", scene.namespace, "aliasroll.io/model-version=2")), None),
        timeout=30,
        what="a pod of version 2",
    )
    scene.kube.cluster.kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "-n",
        scene.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(_exited(pod)),
    )
    resource = scene.wait(lambda r: condition(r, "Ready") == ("False", "RolloutStalled"), "RolloutStalled")
    verdict(scene, resource, "rolloutStalled", "Degraded", "exited with code 1")


def _exited(pod: dict[str, Any]) -> dict[str, Any]:
    """The status a kubelet writes for a container that exited 1 and waits to be restarted."""
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
                            "message": "ModuleNotFoundError: No module named 'sklearn'",
                            "startedAt": started,
                            "finishedAt": started,
                        }
                    },
                }
            ],
        }
    }


def test_nothing_to_serve(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 1)  # no @production
    scene.kube.apply(model_deployment("sentiment", scene.model, mlflow_server.url), namespace=scene.namespace)
    resource = wait_condition(
        scene.kube, scene.namespace, "sentiment", "Ready", ("False", "NothingToServe"), timeout=60
    )
    verdict(scene, resource, "nothingToServe", "Degraded", "production")


def test_a_name_taken_by_someone_else(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 1, production="1")
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sentiment"},
        "spec": {"selector": {"app": "their-app"}, "ports": [{"port": 8000}]},
    }
    scene.kube.apply(theirs, namespace=scene.namespace)
    scene.kube.apply(model_deployment("sentiment", scene.model, mlflow_server.url), namespace=scene.namespace)
    resource = wait_condition(
        scene.kube, scene.namespace, "sentiment", "Ready", ("False", "NameConflict"), timeout=60
    )
    verdict(scene, resource, "nameConflict", "Degraded", "Service 'sentiment'")


def test_an_object_the_api_server_refuses(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 1, production="1")
    # The schema takes any quantities; the API server refuses a container asking more than its limit.
    manifest = model_deployment(
        "sentiment",
        scene.model,
        mlflow_server.url,
        serving={"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
    )
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = wait_condition(
        scene.kube, scene.namespace, "sentiment", "Ready", ("False", "ApplyFailed"), timeout=60
    )
    verdict(scene, resource, "applyFailed", "Degraded", "must be less than or equal to cpu limit")


def test_a_fixed_weight_canary_waits_for_a_human(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 2, production="1", canary="2")
    manifest = model_deployment(
        "sentiment", scene.model, mlflow_server.url, replicas=4, canary={"alias": "canary", "weight": 25}
    )
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "AwaitingPromotion" and condition(r, "Ready") == ("True", "Serving")
        ),
        "a fixed-weight canary in place",
    )
    verdict(scene, resource, "canaryFixedWeight", "Suspended", "move @production to version 2 to promote it")


def test_a_canary_stepping_then_paused(
    operator: OperatorProcess, mlflow_server: MlflowServer, registry: MlflowClient, scene: Scene
) -> None:
    registered(registry, scene.model, 2, production="1", canary="2")
    steps = [{"weight": 25, "duration": "1h"}, {"weight": 50, "duration": "1h"}]
    manifest = model_deployment(
        "sentiment", scene.model, mlflow_server.url, replicas=4, canary={"alias": "canary", "steps": steps}
    )
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "Progressing"
            and bool(canary(r).get("stepStartedAt"))
            and condition(r, "Ready") == ("True", "Serving")
        ),
        "the first step's weight in place",
    )
    verdict(scene, resource, "canaryStep", "Progressing", "step 1/2")

    manifest["spec"]["suspend"] = True
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(lambda r: canary(r).get("phase") == "Paused", "the canary paused")
    verdict(scene, resource, "canaryPaused", "Suspended", "spec.suspend is true")


def test_a_canary_analysed_awaits_promotion_and_is_promoted(
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    scene: Scene,
) -> None:
    registered(registry, scene.model, 2, production="1", canary="2")
    prometheus.set(scene.model, FEW)
    manifest = model_deployment(
        "sentiment",
        scene.model,
        mlflow_server.url,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "3s"}, {"weight": 50, "duration": "3s"}],
            "analysis": {
                "interval": "1s",
                "errorRate": {"maxPercent": 1},
                "prometheus": {"address": prometheus.url},
            },
            "promotion": "manual",
        },
        # Pods that take 2 s to be ready, as real ones take time: the promotion's rollout shows.
        serving={"podTemplate": {"metadata": {"annotations": {READY_DELAY_ANNOTATION: "2s"}}}},
    )
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: canary(r).get("analysis", {}).get("verdict") == "Inconclusive", "an inconclusive verdict"
    )
    verdict(scene, resource, "canaryAnalysisInconclusive", "Progressing", "Analyzing, step 1/2")

    prometheus.set(scene.model, PASSING)
    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "Analyzing"
            and canary(r).get("analysis", {}).get("verdict") == "Passed"
            and "canary error rate" in canary(r).get("message", "")
        ),
        "a passed measurement while analysing",
    )
    verdict(scene, resource, "canaryAnalyzing", "Progressing", "Analyzing, step", "<= limit 1.00%")

    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "AwaitingPromotion" and condition(r, "Ready") == ("True", "Serving")
        ),
        "every step passed",
    )
    verdict(scene, resource, "canaryAwaitingPromotion", "Suspended", "every step passed")

    registry.set_registered_model_alias(scene.model, "production", "2")
    resource = scene.wait(lambda r: canary(r).get("phase") == "Promoting", "the promotion under way")
    verdict(scene, resource, "canaryPromoting", "Progressing", "Promoting")

    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "Succeeded"
            and condition(r, "Ready") == ("True", "Serving")
            and r["status"]["production"]["version"] == "2"
        ),
        "the canary promoted",
    )
    verdict(scene, resource, "canarySucceeded", "Healthy", "version 2 serves production")


def test_a_canary_aborted_until_its_alias_goes(
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    scene: Scene,
) -> None:
    registered(registry, scene.model, 2, production="1", canary="2")
    prometheus.set(scene.model, FAILING)
    manifest = model_deployment(
        "sentiment",
        scene.model,
        mlflow_server.url,
        replicas=4,
        canary={
            "alias": "canary",
            "steps": [{"weight": 25, "duration": "1h"}],
            "analysis": {
                "interval": "2s",
                "failureLimit": 2,
                "errorRate": {"maxPercent": 1},
                "prometheus": {"address": prometheus.url},
            },
            "onAbort": "keepAlias",
        },
    )
    scene.kube.apply(manifest, namespace=scene.namespace)
    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "Analyzing" and canary(r).get("analysis", {}).get("failures") == 1
        ),
        "one failed measurement",
    )
    # One failed measurement of two allowed: the canary still runs.
    verdict(scene, resource, "canaryAnalysisFailed", "Progressing", "Analyzing, step 1/1")

    resource = scene.wait(
        lambda r: (
            canary(r).get("phase") == "Aborted"
            and canary_pods(r) == 0
            and condition(r, "Ready") == ("True", "Serving")
        ),
        "the canary aborted, its pods gone",
    )
    verdict(scene, resource, "canaryAborted", "Degraded", "aborted after 2 failed", "@canary still names it")

    # Someone deletes @canary: the record of the abort stays in status, the abort is over.
    registry.delete_registered_model_alias(scene.model, "canary")
    resource = scene.wait(
        lambda r: "canary" not in (r["status"].get("registry", {}).get("aliases") or {}),
        "the registry's answer without @canary",
    )
    assert canary(resource).get("phase") == "Aborted"
    verdict(scene, resource, "canaryAbortedAliasDeleted", "Healthy", "canary version 2 was aborted")
