"""The install manifests as users apply them, against the real API server and kubectl's kustomize.

The Argo CD health check (manifests/argocd) is merged into an argocd-cm both ways the README shows.

The namespaced install (examples/install-namespaced, written for a namespace of the test's own by
tests/support/install.py) is rendered the way the README says, with a name prefix so its
cluster-scoped objects (ClusterRole, ClusterRoleBinding) and its ServiceAccount do not replace the
cluster-wide install that the session applied for the other tests. Its ServiceAccount then asks the
API server what it may do (`kubectl auth can-i` with a token of its own): everything the operator
needs in the watched namespace, nothing in any other, and no Secrets cluster-wide. Last, the
operator runs with that token and those flags alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import OPERATOR_NAMESPACE, REPO, RUN, Kube, model_deployment, wait_condition, wait_for

from localcluster import LocalCluster
from operatorprocess import OperatorProcess
from support.install import write_namespaced_install

pytestmark = pytest.mark.e2e

PREFIX = "e2e-scoped-"
WATCHED = f"{PREFIX}watched"  # a namespace of the test's own, as users name theirs
ACCOUNT = f"{PREFIX}aliasroll"
OTHER = f"{PREFIX}other"  # a namespace the install does not watch


@dataclass(frozen=True)
class Install:
    objects: list[dict[str, Any]]
    kubeconfig: Path  # authenticates as the install's ServiceAccount


@pytest.fixture(scope="module")
def namespaced_install(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    folder = tmp_path_factory.mktemp("namespaced-install")
    write_namespaced_install(folder, [WATCHED], name_prefix=PREFIX)
    objects = [doc for doc in yaml.safe_load_all(cluster.kubectl("kustomize", str(folder)).stdout) if doc]
    # The operator's namespace is the session's (applied with the default install): never ours to delete.
    owned = yaml.safe_dump_all([obj for obj in objects if obj["kind"] != "Namespace"])
    created = [
        name for name in (WATCHED, OTHER) if cluster.kubectl("get", "namespace", name, check=False).returncode
    ]
    try:
        for name in created:
            cluster.kubectl("create", "namespace", name)
        cluster.kubectl("apply", "-f", "-", input=owned)
        token = cluster.mint_token(OPERATOR_NAMESPACE, ACCOUNT)
        yield Install(objects, cluster.write_kubeconfig_for_token(folder / "kubeconfig", token))
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=owned, check=False)
        for name in created:
            cluster.kubectl("delete", "modeldeployments", "--all", "-n", name, "--wait=false", check=False)
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def can_i(cluster: LocalCluster, install: Install, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", *args, kubeconfig=install.kubeconfig, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {result.stdout}{result.stderr}"
    return answer == "yes"


def test_the_rendered_install_watches_exactly_the_namespaces_it_grants(namespaced_install: Install) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in namespaced_install.objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    [deployment] = by_kind["Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    watched = {arg.removeprefix("--namespace=") for arg in args if arg.startswith("--namespace=")}
    assert watched == {WATCHED}
    # The Roles of the watched namespaces, and leader election's in the operator's own namespace.
    roles = {obj["metadata"]["name"]: obj for obj in by_kind["Role"] + by_kind["RoleBinding"]}
    election = {name for name in roles if name.endswith("leader-election")}
    assert {roles[name]["metadata"]["namespace"] for name in election} == {OPERATOR_NAMESPACE}
    assert {role["metadata"]["namespace"] for name, role in roles.items() if name not in election} == watched
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == ACCOUNT
    [cluster_role] = by_kind["ClusterRole"]
    cluster_resources = {resource for rule in cluster_role["rules"] for resource in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}


# (what it asks, whether the answer must be yes): the operator's needs in the watched namespace, and the
# same asked elsewhere.
ACCESS = [
    ("watch secrets in the watched namespace", ["watch", "secrets", "-n", WATCHED], True),
    ("list secrets in the watched namespace", ["list", "secrets", "-n", WATCHED], True),
    ("list secrets in another namespace", ["list", "secrets", "-n", OTHER], False),
    ("watch secrets cluster-wide", ["watch", "secrets", "--all-namespaces"], False),
    ("get secrets in the watched namespace", ["get", "secrets", "-n", WATCHED], False),
    ("watch pods in the watched namespace", ["watch", "pods", "-n", WATCHED], True),
    ("watch pods in another namespace", ["watch", "pods", "-n", OTHER], False),
    ("watch Services in the watched namespace", ["watch", "services", "-n", WATCHED], True),
    (
        "watch ModelDeployments in the watched namespace",
        ["watch", "modeldeployments.aliasroll.io", "-n", WATCHED],
        True,
    ),
    (
        "list ModelDeployments cluster-wide",
        ["list", "modeldeployments.aliasroll.io", "--all-namespaces"],
        False,
    ),
    (
        "patch ModelDeployment status in the watched namespace",
        ["patch", "modeldeployments.aliasroll.io", "--subresource=status", "-n", WATCHED],
        True,
    ),
    ("update a ModelDeployment's spec", ["update", "modeldeployments.aliasroll.io", "-n", WATCHED], False),
    ("create Deployments in the watched namespace", ["create", "deployments.apps", "-n", WATCHED], True),
    ("create Deployments in another namespace", ["create", "deployments.apps", "-n", OTHER], False),
    ("delete Services in the watched namespace", ["delete", "services", "-n", WATCHED], True),
    (
        "create HTTPRoutes in the watched namespace",
        ["create", "httproutes.gateway.networking.k8s.io", "-n", WATCHED],
        True,
    ),
    (
        "create PodDisruptionBudgets in the watched namespace",
        ["create", "poddisruptionbudgets.policy", "-n", WATCHED],
        True,
    ),
    ("create events in the watched namespace", ["create", "events", "-n", WATCHED], True),
    ("create events in another namespace", ["create", "events", "-n", OTHER], False),
    ("watch CRDs (Kopf)", ["watch", "customresourcedefinitions.apiextensions.k8s.io"], True),
    ("watch namespaces (Kopf)", ["watch", "namespaces"], True),
    ("create namespaces", ["create", "namespaces"], False),
    ("create pods in the watched namespace", ["create", "pods", "-n", WATCHED], False),
    # The readiness gate of spec.rollback: a patch of a pod's status, nothing else of a pod.
    (
        "patch pod status in the watched namespace",
        ["patch", "pods", "--subresource=status", "-n", WATCHED],
        True,
    ),
    ("patch pod status in another namespace", ["patch", "pods", "--subresource=status", "-n", OTHER], False),
    (
        "update pod status in the watched namespace",
        ["update", "pods", "--subresource=status", "-n", WATCHED],
        False,
    ),
    ("patch pods in the watched namespace", ["patch", "pods", "-n", WATCHED], False),
    (
        "update its Lease in the operator's namespace",
        ["update", "leases.coordination.k8s.io/aliasroll", "-n", OPERATOR_NAMESPACE],
        True,
    ),
    (
        "update another Lease in the operator's namespace",
        ["update", "leases.coordination.k8s.io/kube-scheduler", "-n", OPERATOR_NAMESPACE],
        False,
    ),
    (
        "update a Deployment (every write is an apply)",
        ["update", "deployments.apps", "-n", WATCHED],
        False,
    ),
    (
        "create a Lease in the operator's namespace",
        ["create", "leases.coordination.k8s.io", "-n", OPERATOR_NAMESPACE],
        True,
    ),
    (
        "update Leases in the watched namespace",
        ["update", "leases.coordination.k8s.io", "-n", WATCHED],
        False,
    ),
    (
        "delete Leases in the operator's namespace",
        ["delete", "leases.coordination.k8s.io", "-n", OPERATOR_NAMESPACE],
        False,
    ),
]


@pytest.mark.parametrize(("question", "allowed"), [(a[1], a[2]) for a in ACCESS], ids=[a[0] for a in ACCESS])
def test_the_service_account_may_act_only_in_its_watched_namespace(
    cluster: LocalCluster, namespaced_install: Install, question: list[str], allowed: bool
) -> None:
    assert can_i(cluster, namespaced_install, *question) is allowed


@pytest.fixture(scope="module")
def namespaced_operator(namespaced_install: Install) -> Iterator[OperatorProcess]:
    """The operator with the install's token and the install's --namespace flags (its own probe port)."""
    [deployment] = [obj for obj in namespaced_install.objects if obj["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    process = OperatorProcess(
        kubeconfig=namespaced_install.kubeconfig,
        log_path=REPO / ".work" / f"{RUN}-operator-namespaced.log",
        verbose=True,
        args=[arg for arg in args if not arg.startswith("--liveness")],
        env={"ALIASROLL_SERVING_IMAGE": "aliasroll/serving:e2e", "ALIASROLL_REGISTRY_TIMEOUT": "2"},
    )
    process.log_path.unlink(missing_ok=True)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_the_operator_runs_with_these_rights_alone(kube: Kube, namespaced_operator: OperatorProcess) -> None:
    # Nothing listens on port 9 (discard): the operator reports the registry unreachable, in status and in
    # a Warning event. That is a read of the resource, a status write and an event, with these rights.
    for namespace in (WATCHED, OTHER):
        kube.apply(model_deployment("scoped", "sentiment", "http://127.0.0.1:9"), namespace=namespace)
    wait_condition(kube, WATCHED, "scoped", "RegistryReachable", ("False", "RegistryUnreachable"))
    wait_for(
        lambda: [event for event in kube.events(WATCHED, "scoped") if event[1] == "RegistryUnreachable"],
        timeout=30,
        what="the RegistryUnreachable event",
    )

    # The log names what Kopf watches: the user's resources only in the watched namespace, and
    # cluster-wide only what the ClusterRole grants. Another operator may run in this session (the
    # cluster-wide one of the other tests), so the log, not the status, says what this one did.
    # Kopf logs a handler's success after it returns, a moment after its event is posted: wait for it.
    succeeded = "Handler 'model_deployment_event' succeeded."
    wait_for(
        lambda: succeeded in namespaced_operator.log_path.read_text(errors="replace"),
        timeout=30,
        what="the handler's success in the operator's log",
    )
    log = namespaced_operator.log_path.read_text(errors="replace")
    watches = re.findall(r"Starting the watch-stream for (\S+) (.+)\.$", log, flags=re.MULTILINE)
    assert set(watches) == {
        ("customresourcedefinitions.v1.apiextensions.k8s.io", "cluster-wide"),
        ("namespaces.v1", "cluster-wide"),
        ("modeldeployments.v1alpha1.aliasroll.io", f"in '{WATCHED}'"),
    }, log
    # And what the operator's own caches watch: what it owns, and the serving pods, there alone.
    cached = re.findall(r"Watching (\S+) objects (.+) \(", log)
    assert set(cached) == {
        (kind, f"in '{WATCHED}'")
        for kind in ("Deployment", "PodDisruptionBudget", "Service", "HTTPRoute", "Job", "Pod")
    }, log
    for trouble in ("Not enough permissions", "forbidden", "Forbidden", "Failed to post"):
        assert trouble not in log, f"{trouble!r} in the operator's log:\n{namespaced_operator.log_tail(40)}"


ARGOCD = REPO / "manifests" / "argocd"
HEALTH_KEY = "resource.customizations.health.aliasroll.io_ModelDeployment"
ARGOCD_CM = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "argocd-cm"},
    "data": {"url": "https://argocd.example.com"},
}


def test_kubectl_patch_merges_the_health_check_into_argocd_cm(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ARGOCD_CM))
    cluster.kubectl(
        "patch",
        "configmap",
        "argocd-cm",
        "-n",
        namespace,
        "--patch-file",
        str(ARGOCD / "argocd-cm-patch.yaml"),
    )
    data = yaml.safe_load(
        cluster.kubectl("get", "configmap", "argocd-cm", "-n", namespace, "-o", "yaml").stdout
    )["data"]
    assert data == {"url": "https://argocd.example.com", HEALTH_KEY: (ARGOCD / "health.lua").read_text()}


@pytest.mark.parametrize(
    "argocd_namespace", [None, "argocd"], ids=["argocd-cm without namespace", "in argocd"]
)
def test_the_kustomize_component_merges_the_health_check_into_argocd_cm(
    cluster: LocalCluster, tmp_path: Path, argocd_namespace: str | None
) -> None:
    # Argo CD's install.yaml leaves namespaces out; kustomizations that vendor it often set one.
    configmap = {**ARGOCD_CM, "metadata": {"name": "argocd-cm", "namespace": argocd_namespace}}
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(configmap))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["argocd-cm.yaml"], "components": [os.path.relpath(ARGOCD, tmp_path)]})
    )
    [rendered] = [
        doc for doc in yaml.safe_load_all(cluster.kubectl("kustomize", str(tmp_path)).stdout) if doc
    ]
    assert rendered["metadata"].get("namespace") == argocd_namespace
    assert rendered["data"] == {
        "url": "https://argocd.example.com",
        HEALTH_KEY: (ARGOCD / "health.lua").read_text(),
    }
