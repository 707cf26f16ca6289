"""The operator's watch-fed caches against the real API server: passes make no LIST of what the
operator owns (nor any read of the credentials Secret), a change to an owned object wakes its owner
at once (no poll needed), and writes the API server keeps refusing show in status.

LISTs are counted by the API server itself (`apiserver_request_total{verb="LIST"}` on its /metrics),
before and after a number of passes the operator counts (`aliasroll_passes_total`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from harness import (
    Deploy,
    Kube,
    available_at,
    condition,
    condition_message,
    model_deployment,
    ready_at,
    registered,
    wait_for,
)
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from mlflowserver import MlflowServer
from operatorprocess import OperatorProcess

# What a pass used to list, every pass: the owned kinds, the serving pods, and the Secret it read.
WATCHED = {"deployments", "services", "poddisruptionbudgets", "httproutes", "pods", "secrets"}


def apiserver_requests(kube: Kube, verb: str, resources: set[str]) -> float:
    status, _, raw = kube.api.get("/metrics")
    assert status == 200, raw[:300]
    return sum(
        sample.value
        for family in text_string_to_metric_families(raw)
        if family.name == "apiserver_request"  # the parser drops the counter's _total
        for sample in family.samples
        if sample.name == "apiserver_request_total"
        and sample.labels.get("verb") == verb
        and sample.labels.get("resource") in resources
    )


def operator_passes(operator: OperatorProcess) -> float:
    return sum(value for (name, _), value in operator.metrics().items() if name == "aliasroll_passes_total")


def no_namespace_terminating(kube: Kube) -> bool:
    # The namespace controller lists every kind of a namespace it deletes (earlier tests' namespaces).
    _, body, _ = kube.api.get("/api/v1/namespaces")
    return all(item["status"].get("phase") != "Terminating" for item in (body or {}).get("items", []))


def test_passes_list_nothing_and_read_the_secret_once(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "mlflow-credentials"},
            "stringData": {"MLFLOW_TRACKING_TOKEN": "a-token"},
        },
        namespace=namespace,
    )
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    manifest["spec"]["registry"]["credentialsSecretRef"] = {"name": "mlflow-credentials"}
    kube.apply(manifest, namespace=namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready at v1")
    wait_for(lambda: no_namespace_terminating(kube), timeout=120, what="earlier namespaces deleted")

    lists_before = apiserver_requests(kube, "LIST", WATCHED)
    secret_reads_before = apiserver_requests(kube, "GET", {"secrets"})
    passes_before = operator_passes(operator)
    # At rest a resource has no timed passes: a change to what the operator applied on an object it
    # owns brings one (a hand edit of its component label; the pass applies it back). What others add
    # (an annotation) is not kept by the cache and wakes nothing. Changes that come within
    # ALIASROLL_CHILD_SETTLE_SECONDS share a pass, so each waits for its own.
    for touch in range(8):
        before = operator_passes(operator)
        kube.cluster.kubectl(
            "label",
            "service/sentiment",
            "-n",
            namespace,
            f"app.kubernetes.io/component=touched-{touch}",
            "--overwrite",
        )
        wait_for(lambda before=before: operator_passes(operator) > before, timeout=30, what=f"pass {touch}")
    lists = apiserver_requests(kube, "LIST", WATCHED) - lists_before
    secret_reads = apiserver_requests(kube, "GET", {"secrets"}) - secret_reads_before
    passes = operator_passes(operator) - passes_before
    print(f"{passes:.0f} passes: {lists:.0f} LISTs of what they read, {secret_reads:.0f} Secret GETs")

    # A list per kind per pass made five or six per pass; the watches made theirs at start.
    assert lists <= 2, f"{lists:.0f} LISTs of owned kinds, pods or Secrets during {passes:.0f} passes"
    assert secret_reads == 0, (
        f"the credentials Secret was read {secret_reads:.0f} times in {passes:.0f} passes"
    )


def test_a_change_to_an_owned_object_wakes_its_owner_without_a_poll(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    manifest["spec"]["registry"]["pollInterval"] = "1h"  # only the watch can bring the next pass
    deploy(manifest, versions=1, ready="1", production="1")
    pdb = kube.get("pdb", "sentiment-production", namespace)
    assert pdb is not None

    # Deleted children come back, under new uids.
    service = kube.get("service", "sentiment", namespace)
    assert service is not None
    kube.cluster.kubectl("delete", "pdb/sentiment-production", "service/sentiment", "-n", namespace)

    def recreated(kind: str, name: str, before: str) -> bool:
        uid = (kube.get(kind, name, namespace) or {}).get("metadata", {}).get("uid")
        return uid not in (None, before)

    wait_for(
        lambda: recreated("pdb", "sentiment-production", pdb["metadata"]["uid"]), timeout=20, what="PDB back"
    )
    wait_for(
        lambda: recreated("service", "sentiment", service["metadata"]["uid"]), timeout=20, what="Service back"
    )

    # Drift: a hand edit of the selector is taken back.
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
        timeout=20,
        what="selector restored",
    )
    assert available_at(kube, namespace, "sentiment-production", "1")


@pytest.fixture
def failing_webhook(kube: Kube, namespace: str) -> Iterator[str]:
    """Every Service create in the test's namespace goes through a webhook nobody serves: the API
    server answers 500 ("failed calling webhook"), on every try, as it does when the Service IP
    range is full."""
    name = f"refuse-services-{namespace}"
    kube.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "refuse.services.e2e.aliasroll.io",
                    "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["services"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }
    )
    yield name
    kube.cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")


def test_writes_the_api_server_keeps_refusing_show_in_status(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
    failing_webhook: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    kube.apply(model_deployment("sentiment", model_name, mlflow_server.url), namespace=namespace)

    def refused() -> dict[str, object] | None:
        resource = kube.get("mdep", "sentiment", namespace)
        return resource if condition(resource, "Ready") == ("False", "ApplyFailed") else None

    resource = wait_for(refused, timeout=60, what="Ready=False/ApplyFailed")
    message = condition_message(resource, "Ready")  # type: ignore[arg-type]
    assert "Service sentiment" in message
    assert "failed calling webhook" in message, "the API server's own words"
    assert kube.get("service", "sentiment", namespace) is None

    # Retried with backoff: once the cause is gone, it goes through.
    kube.cluster.kubectl("delete", "validatingwebhookconfiguration", failing_webhook)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready once it may")


def test_a_quota_that_allows_no_services_shows_in_status(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    namespace: str,
    model_name: str,
) -> None:
    registered(registry, model_name, 1, production="1")
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-services"},
            "spec": {"hard": {"services": "0"}},
        },
        namespace=namespace,
    )
    # The quota controller fills in status.used; until then the quota admits nothing to count.
    wait_for(
        lambda: (
            "services"
            in kube.cluster.kubectl(
                "get", "resourcequota", "no-services", "-n", namespace, "-o", "jsonpath={.status.used}"
            ).stdout
        ),
        timeout=30,
        what="the quota counted",
    )
    kube.apply(model_deployment("sentiment", model_name, mlflow_server.url), namespace=namespace)

    def refused() -> dict[str, object] | None:
        resource = kube.get("mdep", "sentiment", namespace)
        return resource if condition(resource, "Ready") == ("False", "ApplyFailed") else None

    resource = wait_for(refused, timeout=60, what="Ready=False/ApplyFailed")
    message = condition_message(resource, "Ready")  # type: ignore[arg-type]
    assert "quota" in message
    assert "RBAC" not in message

    kube.cluster.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    wait_for(lambda: ready_at(kube, namespace, "sentiment", "1"), timeout=60, what="Ready once it may")


def test_a_registry_outage_adds_no_passes(
    kube: Kube,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    deploy: Deploy,
    namespace: str,
    model_name: str,
) -> None:
    """The poller retries the registry (every 2 s at most here) and wakes the resource when its
    answer changes; the resource's own passes stay at its poll interval instead of backing off on
    their own (1, 2, 3, 3 ... s here: four passes or more in these 8 s)."""
    manifest = model_deployment("sentiment", model_name, mlflow_server.url)
    manifest["spec"]["registry"]["pollInterval"] = "30s"
    deploy(manifest, versions=1, ready="1", production="1")
    # The passes woken by the rollout's progress are over once the count stands still for 3 s.
    passes_before, still_since = operator_passes(operator), time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() - still_since < 3:
        assert time.monotonic() < deadline, "passes kept coming with nothing to do"
        time.sleep(0.5)
        if (now := operator_passes(operator)) != passes_before:
            passes_before, still_since = now, time.monotonic()

    mlflow_server.stop()
    try:
        wait_for(
            lambda: (
                condition(kube.get("mdep", "sentiment", namespace), "RegistryReachable")
                == ("False", "RegistryUnreachable")
            ),
            timeout=30,
            what="RegistryUnreachable",
        )
        time.sleep(8)
        passes = operator_passes(operator) - passes_before
    finally:
        mlflow_server.start()
    # One pass to say the registry is down (the poller's answer changed); none of its own after it.
    assert passes <= 2, f"{passes:.0f} passes in a registry outage of 8 s, with a poll interval of 30 s"
    wait_for(
        lambda: (
            condition(kube.get("mdep", "sentiment", namespace), "RegistryReachable")
            == ("True", "RegistryAnswered")
        ),
        timeout=30,
        what="woken when the registry answers again",
    )
