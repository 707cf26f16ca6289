"""The operator installed as users install it, running as its image's pods on a real node.

`kubectl apply --server-side -f crds/` and `kubectl apply -k manifests/` with no edits (and the
namespaced install, written for a namespace the test names, as examples/install-namespaced shows):
two replicas elect a leader on the Lease, manifests/examples/minimal.yaml is served through its
Service, an alias move is followed, the leader pod is deleted and the other applies the next move
(and posts its events), and `kubectl delete -k` leaves what the README says it keeps and nothing else.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from examples.sentiment.register import register_version
from harness import Kube, ready_at, wait_for
from mlflow import MlflowClient

from localkube import LocalCluster, RealNode
from mlflowserver import MlflowServer
from operatorpods import NAMESPACE, InstalledOperator
from support.install import write_namespaced_install

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "minimal.yaml"
NAME = "sentiment"  # the example's ModelDeployment, its Service and its model
# What an install leaves behind when it is deleted, besides the CRD (README "Uninstalling").
OPERATOR_KINDS = "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,lease,poddisruptionbudget"


@pytest.fixture(scope="module", autouse=True)
def sentiment_versions(mlflow_server: MlflowServer) -> None:
    """Versions 1 and 2 of the example's model, `sentiment`, in the session's registry."""
    for variant in ("v1", "v2"):
        register_version(mlflow_server.url, NAME, variant=variant)


def ask(node: RealNode, kube: Kube, namespace: str) -> str:
    """One request through the ModelDeployment's Service, from inside the node: X-Model-Version."""
    service = kube.get("service", NAME, namespace)
    assert service is not None
    client = (
        "import http.client, json\n"
        f"c = http.client.HTTPConnection({service['spec']['clusterIP']!r}, 80, timeout=10)\n"
        "c.request('POST', '/invocations', body=json.dumps({'inputs': ['this is great']}),"
        " headers={'Content-Type': 'application/json'})\n"
        "r = c.getresponse(); r.read()\n"
        "print(json.dumps({'status': r.status, 'version': r.getheader('X-Model-Version')}))\n"
    )

    def answered() -> str | None:
        result = node.run(sys.executable, "-c", client, check=False)
        if result.returncode != 0:
            return None  # kube-proxy's rules for a new Service trail its endpoints
        out = json.loads(result.stdout)
        return str(out["version"]) if out["status"] == 200 else None

    return wait_for(answered, timeout=60, what=f"an answer through {namespace}/{NAME}")


def serve_the_example(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))


def ready(kube: Kube, namespace: str, version: str, *, timeout: float = 240) -> dict[str, Any]:
    # The example polls the registry every 30 s: a move is seen within that.
    return wait_for(
        lambda: ready_at(kube, namespace, NAME, version),
        timeout=timeout,
        what=f"{namespace}/{NAME} Ready at {version}",
    )


def events_from(cluster: LocalCluster, namespace: str, instance: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    return [
        event
        for event in json.loads(out)["items"]
        if event["involvedObject"].get("kind") == "ModelDeployment"
        and event.get("reportingInstance") == instance
    ]


def assert_no_crash(install: InstalledOperator) -> None:
    restarts = install.restarts()
    assert not any(restarts.values()), f"operator containers restarted: {restarts}\n{install.diagnosis()}"
    for pod in install.ready_pods():
        log = install.logs(pod)
        for trouble in ("Traceback", "LookupError", "getpwuid"):
            assert trouble not in log, f"{trouble} in the log of {pod}:\n{log[-4000:]}"


def test_the_shipped_install_elects_serves_fails_over_and_uninstalls(
    cluster: LocalCluster,
    node: RealNode,
    kube: Kube,
    operator_install: InstalledOperator,
    registry: MlflowClient,
    mlflow_authority: str,
) -> None:
    operator_install.load_images()
    operator_install.install()
    assert len(operator_install.ready_pods()) == 2
    leader = operator_install.leader()

    registry.set_registered_model_alias(NAME, "production", "1")
    serve_the_example(cluster, "ml")
    ready(kube, "ml", "1")
    assert ask(node, kube, "ml") == "1"

    registry.set_registered_model_alias(NAME, "production", "2")
    ready(kube, "ml", "2")
    assert ask(node, kube, "ml") == "2"

    # The leader's pod goes: the other replica takes the Lease and follows the next move.
    deleted = time.monotonic()
    operator_install.delete_pod(leader)
    successor = operator_install.leader(other_than=leader, timeout=60)
    took_over = time.monotonic() - deleted
    registry.set_registered_model_alias(NAME, "production", "1")
    ready(kube, "ml", "1")
    applied = time.monotonic() - deleted
    assert ask(node, kube, "ml") == "1"
    print(
        f"leader pod deleted -> {successor} leading: {took_over:.1f} s; the next move served: {applied:.1f} s"
    )
    # The successor posts its events (workers its resync started post them too).
    moved = wait_for(
        lambda: [e for e in events_from(cluster, "ml", successor) if e["reason"] == "RollbackStarted"],
        timeout=30,
        what=f"the rollback's event posted by {successor}",
    )
    assert "1" in moved[0]["message"]
    assert_no_crash(operator_install)

    # Uninstalled: the operator and its rights go; the CRD, the ModelDeployment and what it runs stay
    # (serving goes on, nothing follows the aliases any more).
    operator_install.uninstall()
    assert cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0
    for kind in ("clusterrole", "clusterrolebinding"):
        assert cluster.kubectl("get", kind, "aliasroll", check=False).returncode != 0, kind
    assert cluster.kubectl("get", "crd", "modeldeployments.aliasroll.io", check=False).returncode == 0
    assert kube.get("mdep", NAME, "ml") is not None
    assert ask(node, kube, "ml") == "1"

    # Deleting the ModelDeployment removes what it owned (the garbage collector, by ownerReferences).
    cluster.kubectl("delete", "mdep", NAME, "-n", "ml")
    wait_for(
        lambda: (
            not cluster.kubectl(
                "get",
                "deployment,service,pdb",
                "-n",
                "ml",
                "-l",
                "app.kubernetes.io/managed-by=aliasroll",
                "-o",
                "name",
            ).stdout.strip()
        ),
        timeout=60,
        what="the serving objects collected",
    )


def test_the_namespaced_install_serves_only_the_namespace_it_names(
    cluster: LocalCluster,
    node: RealNode,
    kube: Kube,
    registry: MlflowClient,
    mlflow_authority: str,
    tmp_path: Path,
) -> None:
    watched, other = "team-watched", "team-other"
    for namespace in (watched, other):
        cluster.kubectl("create", "namespace", namespace)
    install = InstalledOperator(
        cluster, kustomization=write_namespaced_install(tmp_path / "install", [watched])
    )
    install.load_images()
    try:
        install.install()
        install.leader()
        version = "2"
        registry.set_registered_model_alias(NAME, "production", version)
        for namespace in (watched, other):
            cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
        ready(kube, watched, version)
        assert ask(node, kube, watched) == version
        # The other namespace is no business of this operator: no status, nothing made.
        assert not (kube.get("mdep", NAME, other) or {}).get("status")
        assert not cluster.kubectl("get", "deployment", "-n", other, "-o", "name").stdout.strip()
        rendered = [
            doc
            for doc in yaml.safe_load_all(cluster.kubectl("kustomize", str(install.kustomization)).stdout)
            if doc
        ]
        roles = {
            (doc["kind"], doc["metadata"].get("namespace"))
            for doc in rendered
            if doc["kind"] in ("Role", "RoleBinding")
        }
        assert ("Role", watched) in roles
        assert_no_crash(install)
    finally:
        install.uninstall()
        for namespace in (watched, other):
            cluster.kubectl("delete", "mdep", "--all", "-n", namespace, "--wait=false", check=False)
    # The Role and RoleBinding in the watched namespace went with the install.
    left = cluster.kubectl("get", "role,rolebinding", "-n", watched, "-o", "name").stdout.split()
    assert not [name for name in left if name.endswith("/aliasroll")], left
    assert cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0
