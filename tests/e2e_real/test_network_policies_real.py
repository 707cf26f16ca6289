"""The optional NetworkPolicies enforced on the real node: kube-router's network policy controller
(localenv/localkube/netpol.py) runs beside kubelet and kube-proxy in the node's network namespace,
and the serving components (manifests/components/network-policies/serving and gateway-canary) are
applied in a tenant namespace, as the README's "NetworkPolicies" says.

The tenant's objects are the ones the planner makes for a ModelDeployment under the gatewayAPI
router with a canary running (tests/support/netpol.py), labels, ports and Services unchanged; only
the container is a busybox httpd answering on each of the template's ports (no MLflow, no model: the
labels and ports are what the policies see). Then, through the Services' ClusterIPs (kube-proxy's
DNAT, then the policy):

- the Gateway's pod (a namespace labelled aliasroll.io/gateway=true) reaches `<name>-canary`;
- a pod of another namespace, and one of the tenant's own, do not, neither by the Service nor by the
  pod's address; both still reach `<name>` (production);
- the operator's scrape (a pod labelled as the operator, in aliasroll-system) reaches the canary's
  /metrics port; the kubelet's probes (from the node) keep the canary Ready;
- the canary's pods reach a namespace labelled aliasroll.io/model-source=true, and no other pod.

Before the policies, the same outsider reaches the canary: the refusals are the policies' doing.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for

from localkube import ClusterError, LocalCluster, RealNode, netpol
from support.netpol import planned_objects, write_serving_policies
from support.realcluster import unavailable

BUSYBOX = "/bin/busybox"
#: A GET that gives up after 3 s (busybox's own `wget -T` crashes), never through a proxy (the host's
#: environment may name one; it reaches nodes' namespaces through node.run).
WGET = (BUSYBOX, "timeout", "3", BUSYBOX, "wget", "-Y", "off", "-qO-")
NAME = "sentiment"
OPERATOR_NAMESPACE = "aliasroll-system"
OPERATOR_PROBE = "netpol-operator-probe"  # a pod labelled as the operator's, for its scrape
RUN_ID = os.getpid()


@pytest.fixture(scope="module")
def enforcing(
    cluster: LocalCluster, node: RealNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[netpol.NetworkPolicyController]:
    missing = netpol.missing_tools()
    if missing:
        unavailable(f"NetworkPolicy enforcement needs {', '.join(missing)} (make node-packages)")
    try:
        binary = netpol.resolve_binary()
    except ClusterError as e:
        unavailable(f"{e} (make network-policy-binaries)")
    folder = tmp_path_factory.mktemp("kube-router")
    kubeconfig = netpol.node_kubeconfig(cluster.kubeconfig, cluster.server, folder / "kubeconfig")
    controller = netpol.NetworkPolicyController(node, binary=binary, kubeconfig=kubeconfig)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@dataclass(frozen=True)
class Namespaces:
    tenant: str
    gateway: str
    outsider: str
    source: str


def _create_namespace(cluster: LocalCluster, name: str, labels: dict[str, str]) -> None:
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        ),
    )


@pytest.fixture(scope="module")
def namespaces(cluster: LocalCluster, enforcing: netpol.NetworkPolicyController) -> Iterator[Namespaces]:
    names = Namespaces(
        tenant=f"netpol-tenant-{RUN_ID}",
        gateway=f"netpol-gateway-{RUN_ID}",
        outsider=f"netpol-outsider-{RUN_ID}",
        source=f"netpol-source-{RUN_ID}",
    )
    _create_namespace(cluster, names.tenant, {})
    _create_namespace(cluster, names.gateway, {"aliasroll.io/gateway": "true"})
    _create_namespace(cluster, names.outsider, {})
    _create_namespace(cluster, names.source, {"aliasroll.io/model-source": "true"})
    created_operator_namespace = (
        cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0
    )
    if created_operator_namespace:  # as manifests/namespace.yaml makes it
        _create_namespace(cluster, OPERATOR_NAMESPACE, {"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        yield names
    finally:
        cluster.kubectl(
            "delete",
            "pod",
            "-n",
            OPERATOR_NAMESPACE,
            OPERATOR_PROBE,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
        for name in (names.tenant, names.gateway, names.outsider, names.source):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        if created_operator_namespace:
            cluster.kubectl("delete", "namespace", OPERATOR_NAMESPACE, "--wait=false", check=False)


def _server_script(body: str, ports: list[int], root: str) -> str:
    """busybox httpd (it daemonizes) on each port, serving `body` at / and the probes' paths."""
    serve = " && ".join(f"{BUSYBOX} httpd -p {port} -h {root}" for port in ports)
    return (
        f"mkdir -p {root} && echo {body} > {root}/index.html && touch {root}/ready {root}/live "
        f"&& {serve} && exec {BUSYBOX} sleep 1000000"
    )


def _client_pod(
    name: str, *, image: str, placement: dict[str, Any], labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            **placement,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            # Pod Security "restricted", which the operator's namespace enforces (manifests/).
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # writable by the user
                    "command": [BUSYBOX, "sh", "-c", _server_script(name, [8080], "/tmp/www")],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def _runnable(obj: dict[str, Any], *, image: str, placement: dict[str, Any]) -> dict[str, Any]:
    """The planner's object, applied without its owner (none exists here: the garbage collector would
    delete it); a Deployment's container becomes busybox httpd on each of its ports."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("ownerReferences", None)
    if obj["kind"] != "Deployment":
        return obj
    template = obj["spec"]["template"]
    pod = template["spec"]
    pod.update(copy.deepcopy(placement))
    pod["securityContext"]["runAsUser"] = 10001  # the busybox image names no user (runAsNonRoot)
    pod["terminationGracePeriodSeconds"] = 1
    [container] = pod["containers"]
    container.pop("lifecycle", None)
    ports = sorted({port["containerPort"] for port in container["ports"]})
    track = template["metadata"]["labels"]["aliasroll.io/track"]
    container.update(
        image=image,
        imagePullPolicy="Never",
        command=[BUSYBOX, "sh", "-c", _server_script(track, ports, "/scratch/www")],
    )
    # The probes keep the template's paths and ports: busybox serves the files of those names.
    return obj


@dataclass(frozen=True)
class Tenant:
    namespaces: Namespaces
    services: dict[str, str]  # Service name -> ClusterIP
    pods: dict[str, dict[str, Any]]  # track -> one pod (its IP, its named ports)


def _get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return out


@pytest.fixture(scope="module")
def tenant(
    cluster: LocalCluster, node: RealNode, namespaces: Namespaces, placement: dict[str, Any]
) -> Tenant:
    image = node.images["pause"]
    objects = [
        _runnable(obj, image=image, placement=placement)
        for obj in planned_objects(namespace=namespaces.tenant, name=NAME, router="gatewayAPI")
        if obj["kind"] in ("Deployment", "Service")
    ]
    clients = [
        (
            namespaces.gateway,
            _client_pod("gateway", image=image, placement=placement, labels={"app": "gateway"}),
        ),
        (
            namespaces.outsider,
            _client_pod("outsider", image=image, placement=placement, labels={"app": "client"}),
        ),
        (
            namespaces.tenant,
            _client_pod("neighbour", image=image, placement=placement, labels={"app": "client"}),
        ),
        (
            namespaces.source,
            _client_pod("mlflow", image=image, placement=placement, labels={"app": "mlflow"}),
        ),
        (
            OPERATOR_NAMESPACE,
            _client_pod(
                OPERATOR_PROBE,
                image=image,
                placement=placement,
                labels={"app.kubernetes.io/name": "aliasroll", "app.kubernetes.io/component": "operator"},
            ),
        ),
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    for namespace, pod in clients:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    for obj in objects:
        if obj["kind"] == "Deployment":
            name = obj["metadata"]["name"]
            cluster.kubectl(
                "rollout",
                "status",
                "-n",
                namespaces.tenant,
                f"deployment/{name}",
                "--timeout=120s",
                timeout=150,
            )
    for namespace, pod in clients:
        name = pod["metadata"]["name"]
        cluster.kubectl(
            "wait", "-n", namespace, f"pod/{name}", "--for=condition=Ready", "--timeout=120s", timeout=150
        )
    services = {
        obj["metadata"]["name"]: _get(cluster, "service", "-n", namespaces.tenant, obj["metadata"]["name"])[
            "spec"
        ]["clusterIP"]
        for obj in objects
        if obj["kind"] == "Service"
    }
    pods: dict[str, dict[str, Any]] = {}
    for item in _get(
        cluster, "pods", "-n", namespaces.tenant, "-l", "app.kubernetes.io/managed-by=aliasroll"
    )["items"]:
        track = item["metadata"]["labels"]["aliasroll.io/track"]
        ports = {p["name"]: p["containerPort"] for p in item["spec"]["containers"][0]["ports"]}
        pods[track] = {"ip": item["status"]["podIP"], "ports": ports}
    assert set(services) == {NAME, f"{NAME}-production", f"{NAME}-canary"}
    assert set(pods) == {"production", "canary"}
    return Tenant(namespaces=namespaces, services=services, pods=pods)


def fetch(cluster: LocalCluster, namespace: str, pod: str, url: str) -> str | None:
    """What `pod` gets from `url` (busybox wget, 3 s), or None when the connection fails."""
    result = cluster.kubectl("exec", "-n", namespace, pod, "--", *WGET, url, check=False, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def test_only_the_router_path_reaches_the_canary(
    cluster: LocalCluster,
    node: RealNode,
    tenant: Tenant,
    enforcing: netpol.NetworkPolicyController,
    tmp_path: Path,
) -> None:
    ns = tenant.namespaces
    canary_service = f"http://{tenant.services[f'{NAME}-canary']}/"
    stable_service = f"http://{tenant.services[NAME]}/"
    canary = tenant.pods["canary"]
    canary_pod = f"http://{canary['ip']}:{canary['ports']['http']}/"
    scrape_port = canary["ports"].get("admin", canary["ports"]["http"])
    canary_metrics = f"http://{canary['ip']}:{scrape_port}/"
    outsider = (ns.outsider, "outsider")
    neighbour = (ns.tenant, "neighbour")
    gateway = (ns.gateway, "gateway")
    operator = (OPERATOR_NAMESPACE, OPERATOR_PROBE)

    # Without the policies, anyone calls the canary.
    assert (
        wait_for(lambda: fetch(cluster, *outsider, canary_service), timeout=30, what="the canary, unguarded")
        == "canary"
    )
    assert fetch(cluster, *neighbour, canary_pod) == "canary"

    folder = write_serving_policies(tmp_path / "policies", ns.tenant, gateway_canary=True)
    cluster.kubectl(
        "apply", "--server-side", "-f", "-", input=cluster.kubectl("kustomize", str(folder)).stdout
    )
    wait_for(
        lambda: fetch(cluster, *outsider, canary_service) is None,
        timeout=60,
        interval=1.0,
        what="kube-router to enforce the canary's policy",
    )

    refused = {
        f"{who[1]} -> {what}": fetch(cluster, *who, url)
        for who in (outsider, neighbour)
        for what, url in (("<name>-canary", canary_service), ("the canary's pod", canary_pod))
    }
    assert refused == dict.fromkeys(refused), refused
    # The router's path: the Gateway reaches the canary, by its Service and by its pods.
    assert fetch(cluster, *gateway, canary_service) == "canary"
    assert fetch(cluster, *gateway, canary_pod) == "canary"
    # Production stays open to clients (the Service `<name>`).
    for who in (outsider, neighbour, gateway):
        assert fetch(cluster, *who, stable_service) == "production", who
    # The operator's scrape of the canary's /metrics port, and the kubelet's probes from the node.
    assert fetch(cluster, *operator, canary_metrics) == "canary"
    assert node.run(*WGET, canary_metrics, check=False).stdout.strip() == "canary"
    if "admin" in canary["ports"]:
        assert fetch(cluster, *gateway, canary_metrics) is None  # the Gateway gets no /metrics
    status = _get(cluster, "deployment", "-n", ns.tenant, f"{NAME}-canary")["status"]
    assert status.get("availableReplicas") == status.get("replicas"), status


def test_serving_pods_reach_model_sources_only(
    cluster: LocalCluster, tenant: Tenant, enforcing: netpol.NetworkPolicyController, tmp_path: Path
) -> None:
    ns = tenant.namespaces
    folder = write_serving_policies(tmp_path / "policies", ns.tenant, gateway_canary=True)
    cluster.kubectl(
        "apply", "--server-side", "-f", "-", input=cluster.kubectl("kustomize", str(folder)).stdout
    )
    mlflow_ip = _get(cluster, "pod", "-n", ns.source, "mlflow")["status"]["podIP"]
    outsider_ip = _get(cluster, "pod", "-n", ns.outsider, "outsider")["status"]["podIP"]
    canary_pod = _get(cluster, "pods", "-n", ns.tenant, "-l", "aliasroll.io/track=canary")["items"][0][
        "metadata"
    ]["name"]
    production_ip = tenant.pods["production"]["ip"]
    assert (
        wait_for(
            lambda: fetch(cluster, ns.tenant, canary_pod, f"http://{mlflow_ip}:8080/"),
            timeout=30,
            what="the model source from the canary's pod",
        )
        == "mlflow"
    )
    assert fetch(cluster, ns.tenant, canary_pod, f"http://{outsider_ip}:8080/") is None
    assert (
        fetch(
            cluster,
            ns.tenant,
            canary_pod,
            f"http://{production_ip}:{tenant.pods['production']['ports']['http']}/",
        )
        is None
    )
    assert (
        fetch(cluster, ns.outsider, "outsider", f"http://{mlflow_ip}:8080/") == "mlflow"
    )  # not the target's doing
