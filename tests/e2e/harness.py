"""The end-to-end harness: the operator as a process, kubectl helpers, and polling with deadlines."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from localcluster import LocalCluster

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "e2e-webhook-secret"  # the session operator's, for webhooks the tests register
OPERATOR_NAMESPACE = "aliasroll-system"
OPERATOR_ACCOUNT = "aliasroll"


def wait_for(check: Callable[[], T | None], *, timeout: float = 60, what: str, interval: float = 0.2) -> T:
    """Polls `check` until it returns something truthy; fails with `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")
        time.sleep(interval)


class Kube:
    """kubectl for one cluster, returning parsed JSON."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def apply(self, manifest: dict[str, Any] | str, *, namespace: str | None = None) -> str:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.cluster.kubectl(*args, input=text).stdout

    def try_apply(self, manifest: dict[str, Any], *, namespace: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
        )

    def get(
        self, kind: str, name: str, namespace: str, *, managed_fields: bool = False
    ) -> dict[str, Any] | None:
        extra = ["--show-managed-fields"] if managed_fields else []
        result = self.cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", *extra, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.cluster.kubectl(*args).stdout)["items"]
        return items

    def events(self, namespace: str, name: str) -> list[tuple[str, str, str]]:
        return [
            (event["type"], event["reason"], event["message"])
            for event in self.list("events", namespace)
            if event["involvedObject"].get("name") == name
            and event["involvedObject"].get("kind") == "ModelDeployment"
        ]


def model_deployment(name: str, model: str, tracking_uri: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": model},
        "registry": {"trackingUri": tracking_uri, "pollInterval": "1s"},
        "replicas": 2,
    }
    body.update(spec)
    return {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def deployment_version(kube: Kube, namespace: str, name: str) -> str | None:
    """The model version pinned in a Deployment's pod template (None if the Deployment is absent)."""
    deployment = kube.get("deployment", name, namespace)
    if deployment is None:
        return None
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels.get("aliasroll.io/model-version")


def available_at(kube: Kube, namespace: str, name: str, version: str) -> dict[str, Any] | None:
    """The Deployment once it runs `version` on all its replicas and all are available."""
    deployment = kube.get("deployment", name, namespace)
    if deployment is None:
        return None
    spec, status = deployment["spec"], deployment.get("status", {})
    rolled = (
        spec["template"]["metadata"]["labels"].get("aliasroll.io/model-version") == version
        and status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == spec["replicas"]
        and status.get("availableReplicas", 0) == spec["replicas"]
        and status.get("replicas", 0) == spec["replicas"]
    )
    return deployment if rolled else None


def condition(resource: dict[str, Any] | None, type_: str) -> tuple[str, str] | None:
    for item in (resource or {}).get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return item["status"], item["reason"]
    return None


def wait_condition(
    kube: Kube, namespace: str, name: str, type_: str, expected: tuple[str, str], *, timeout: float = 30
) -> dict[str, Any]:
    """The ModelDeployment once its condition `type_` has (status, reason) == `expected`."""

    def check() -> dict[str, Any] | None:
        resource = kube.get("mdep", name, namespace)
        return resource if condition(resource, type_) == expected else None

    return wait_for(check, timeout=timeout, what=f"{name}: {type_}={expected[0]}/{expected[1]}")


def condition_message(resource: dict[str, Any], type_: str) -> str:
    return str(next(c["message"] for c in resource["status"]["conditions"] if c["type"] == type_))


def registered(registry: Any, model: str, versions: int, **aliases: str) -> None:
    """`versions` new versions of a new model, with aliases set (alias=version)."""
    from support.registry import quick_versions

    quick_versions(registry, model, versions)
    for alias, version in aliases.items():
        registry.set_registered_model_alias(model, alias, version)


def ready_at(
    kube: Kube, namespace: str, name: str, production: str, canary: str | None = None
) -> dict[str, Any] | None:
    """The ModelDeployment once its status says Ready with these versions."""
    resource = kube.get("mdep", name, namespace)
    status = (resource or {}).get("status", {})
    if (
        condition(resource, "Ready") == ("True", "Serving")
        and status.get("production", {}).get("version") == production
        and status.get("canary", {}).get("version") == canary
        and status.get("observedGeneration") == resource["metadata"]["generation"]  # type: ignore[index]
    ):
        return resource
    return None
