"""The end-to-end harness: the operator as a process, kubectl helpers, and polling with deadlines."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from localcluster import LocalCluster

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
# A session's name: its cluster's state dir and operator logs under .work (see conftest.py).
RUN = os.environ.get("ALIASROLL_E2E_RUN", "e2e")
# The session operator's webhook registries (README "Push"), each with a secret of its own: `e2e` is
# the session's MLflow server, for webhooks the tests register; `elsewhere` stands for another
# tenant's registry, which no test runs.
WEBHOOK_REGISTRY = "e2e"
WEBHOOK_SECRET = "Xk2vR8qLm4TzN7wB1pYc9HsD3gJf6AeU"
OTHER_REGISTRY = "elsewhere"
OTHER_REGISTRY_URI = "http://127.0.0.1:9/elsewhere"
OTHER_WEBHOOK_SECRET = "b5Qn0WdZ8rKx3MjV7tGy1LhC4sPe9FuA"
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


# The kinds the tests read, by the names they use: where the API serves them. A GET on a kept-alive
# connection costs the API server and the test well under a millisecond of CPU; `kubectl get` costs
# about 60 ms (a Go process each time), and the tests poll several times a second on 2 cores.
API_PATHS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        ("mdep", "modeldeployment", "modeldeployments"), ("/apis/aliasroll.io/v1alpha1", "modeldeployments")
    ),
    **dict.fromkeys(("deployment", "deployments"), ("/apis/apps/v1", "deployments")),
    **dict.fromkeys(("service", "services"), ("/api/v1", "services")),
    **dict.fromkeys(("pod", "pods"), ("/api/v1", "pods")),
    **dict.fromkeys(("event", "events"), ("/api/v1", "events")),
    **dict.fromkeys(("hpa",), ("/apis/autoscaling/v2", "horizontalpodautoscalers")),
    **dict.fromkeys(("pdb",), ("/apis/policy/v1", "poddisruptionbudgets")),
    **dict.fromkeys(("job", "jobs"), ("/apis/batch/v1", "jobs")),
    **dict.fromkeys(("httproute", "httproutes"), ("/apis/gateway.networking.k8s.io/v1", "httproutes")),
}


class ApiReader:
    """Admin GETs on the API server over one kept-alive connection per thread."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None
        self._opened: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._context is None:
                context = ssl.create_default_context(cafile=str(self.cluster.ca_file))
                pki = self.cluster.pki_dir
                context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
                self._context = context
            url = urlsplit(self.cluster.server)
            connection = http.client.HTTPSConnection(url.netloc, context=self._context, timeout=30)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        """Closes every thread's connection (a thread that reads again opens a new one)."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()

    def get(self, path: str) -> tuple[int, dict[str, Any] | None, str]:
        """(status, JSON body or None, raw body); one retry on a fresh connection if the kept one broke."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request("GET", path, headers={"Accept": "application/json"})
                response = connection.getresponse()
                raw = response.read().decode()
                break
            except (OSError, http.client.HTTPException):
                connection.close()  # stays in _opened: closing twice is harmless
                self._local.connection = None
                if attempt == 2:
                    raise
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        return response.status, body if isinstance(body, dict) else None, raw


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """As kubectl prints it by default."""
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


class Kube:
    """kubectl for one cluster, returning parsed JSON; reads of the kinds in API_PATHS go straight to
    the API server (the same JSON kubectl prints)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.api = ApiReader(cluster)

    def close(self) -> None:
        self.api.close()

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
        if kind in API_PATHS:
            prefix, resource = API_PATHS[kind]
            status, body, raw = self.api.get(
                f"{prefix}/namespaces/{quote(namespace)}/{resource}/{quote(name)}"
            )
            if status == 404 and body is not None and body.get("reason") == "NotFound":
                return None
            if status != 200 or body is None:
                raise AssertionError(f"GET {kind}/{name} in {namespace}: {status} {raw[:500]}")
            return body if managed_fields else _without_managed_fields(body)
        extra = ["--show-managed-fields"] if managed_fields else []
        result = self.cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", *extra, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        if kind in API_PATHS:
            prefix, resource = API_PATHS[kind]
            query = f"?labelSelector={quote(selector)}" if selector else ""
            status, body, raw = self.api.get(f"{prefix}/namespaces/{quote(namespace)}/{resource}{query}")
            if status != 200 or body is None:
                raise AssertionError(f"GET {kind} in {namespace}: {status} {raw[:500]}")
            # Items of an API list carry no kind or apiVersion; kubectl's do.
            api_version, list_kind = body["apiVersion"], body["kind"].removesuffix("List")
            return [
                {"apiVersion": api_version, "kind": list_kind, **_without_managed_fields(item)}
                for item in body["items"]
            ]
        args = ["get", kind, "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self.cluster.kubectl(*args).stdout)["items"]
        return items

    def events(self, namespace: str, name: str) -> list[tuple[str, str, str]]:
        """The ModelDeployment's events (type, reason, message), each as often as it happened: the
        operator folds a repeat into the first event's count, as client-go's recorder does."""
        return [
            (event["type"], event["reason"], event["message"])
            for event in self.list("events", namespace)
            if event["involvedObject"].get("name") == name
            and event["involvedObject"].get("kind") == "ModelDeployment"
            for _ in range(max(1, int(event.get("count") or 1)))
        ]


def wait_events(
    kube: Kube, namespace: str, name: str, *reasons: str, timeout: float = 30
) -> list[tuple[str, str, str]]:
    """The ModelDeployment's events (type, reason, message) once all of `reasons` are among them. The
    operator queues events after it writes status (kube/events.py), so they may trail the status."""

    def check() -> list[tuple[str, str, str]] | None:
        events = kube.events(namespace, name)
        return events if set(reasons) <= {reason for _, reason, _ in events} else None

    return wait_for(check, timeout=timeout, what=f"{name}: events {', '.join(reasons)}")


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


class Deploy:
    """The prologue most tests share (the `deploy` fixture): a model's versions in the session's
    MLflow server with its aliases set, a ModelDeployment applied, and the resource once Ready."""

    def __init__(self, kube: Kube, registry: Any, namespace: str) -> None:
        self.kube, self.registry, self.namespace = kube, registry, namespace

    def __call__(
        self,
        manifest: dict[str, Any],
        *,
        versions: int | None,
        ready: str | tuple[str, str] | None,
        timeout: float = 60,
        **aliases: str,
    ) -> dict[str, Any] | None:
        """`versions` quick versions of a new model, the one `manifest` names (None: the test has
        registered its own), with `aliases` set (alias=version); `manifest` applied in the test's
        namespace; with `ready` (the production version, or production and canary), the resource once
        Ready at them, else None at once."""
        model = manifest["spec"]["model"]["name"]
        if versions is not None:
            registered(self.registry, model, versions)
        for alias, version in aliases.items():
            self.registry.set_registered_model_alias(model, alias, version)
        self.kube.apply(manifest, namespace=self.namespace)
        if ready is None:
            return None
        name = manifest["metadata"]["name"]
        at = (ready,) if isinstance(ready, str) else ready
        return wait_for(
            lambda: ready_at(self.kube, self.namespace, name, *at),
            timeout=timeout,
            what=f"{name} Ready at {'+'.join(at)}",
        )
