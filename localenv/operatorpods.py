"""The operator as users install it: `kubectl apply --server-side -f crds/`, `kubectl apply -k` of the
shipped manifests (or a kustomization of the user's own over them), and its image's pods on the real
node of the local cluster. Shared by the install tier (tests/e2e_install), the demo and the failover
benchmark.

Also `host_service`: a Service name for a server on the host's loopback (an MLflow server), so the
manifests' own example (`http://mlflow.mlflow.svc.cluster.local:5000`) works unchanged in the local
cluster: a selectorless Service whose EndpointSlice points at the port the real node exposes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from localkube import REAL_NODE_TAINT, ClusterError, LocalCluster, RealNode

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
CRDS = REPO / "crds"
#: What manifests/ installs the operator as (its namespace, its Deployment, its Lease).
NAMESPACE = "aliasroll-system"
DEPLOYMENT = "aliasroll"
LEASE = "aliasroll"
POD_SELECTOR = "app.kubernetes.io/name=aliasroll,app.kubernetes.io/component=operator"
#: The images the manifests name, loaded into the real node before the install.
IMAGES = ("operator", "serving")
T = TypeVar("T")
#: The MLflow server's name inside the cluster, as manifests/examples/ name it (host_service makes it).
MLFLOW_SERVICE = "mlflow.mlflow.svc.cluster.local"
#: An MLflow server (3.5+) answers only Host headers it knows (its DNS-rebinding guard): loopback and
#: private addresses by default, and a Service name only when listed, as in any cluster.
MLFLOW_ALLOWED_HOSTS = {
    "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(
        (
            "localhost",
            "localhost:*",
            "127.0.0.1",
            "127.0.0.1:*",
            "10.*",
            MLFLOW_SERVICE,
            f"{MLFLOW_SERVICE}:*",
        )
    )
}


def _wait(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def real_node_only(cluster: LocalCluster) -> None:
    """Make the cluster a one-node cluster whose node runs containers, as users' clusters are: the
    kwok node goes, and the real node's taint (which keeps other tiers' pods off it) is lifted, so the
    shipped manifests schedule with no placement of their own. Idempotent."""
    cluster.kubectl("delete", "node", cluster.node_name, "--ignore-not-found")
    cluster.kubectl("taint", "nodes", cluster.node.name, f"{REAL_NODE_TAINT[0]}-", check=False)


def host_service(
    cluster: LocalCluster, node: RealNode, *, namespace: str, name: str, port: int, host_port: int
) -> str:
    """`<name>.<namespace>.svc.cluster.local:<port>` for pods, reaching 127.0.0.1:host_port of the host
    (through the real node's bridge to its address). Returns the URL authority."""
    address, exposed = node.expose_host_port(host_port)
    labels = {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "localenv"}
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": port, "targetPort": exposed, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-host", "namespace": namespace, "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": exposed, "protocol": "TCP"}],
        },
    ]
    cluster.kubectl(
        "apply", "--server-side", "--field-manager=localenv", "-f", "-",
        input="\n---\n".join(json.dumps(obj) for obj in objects),
    )  # fmt: skip
    return f"{name}.{namespace}.svc.cluster.local:{port}"


class InstalledOperator:
    """The operator installed from `kustomization` (the shipped manifests by default) into `cluster`."""

    def __init__(self, cluster: LocalCluster, *, kustomization: Path = MANIFESTS) -> None:
        self.cluster = cluster
        self.kustomization = kustomization

    # ------------------------------------------------------------------------------------ install

    def load_images(self) -> dict[str, str]:
        """The operator and serving images, built from their Dockerfiles, into the real node."""
        return self.cluster.node.load_images(list(IMAGES))

    def install_crds(self, *, timeout: float = 60.0) -> None:
        self.cluster.kubectl("apply", "--server-side", "-f", str(CRDS))

        def established() -> bool:
            out = self.cluster.kubectl(
                "get", "crd", "modeldeployments.aliasroll.io",
                "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False,
            ).stdout  # fmt: skip
            return out.strip() == "True"

        _wait(established, timeout=timeout, what="the ModelDeployment CRD Established")

    def install(self, *, timeout: float = 240.0) -> None:
        """CRDs, then `kubectl apply -k`, then until every replica of the operator is available."""
        self.install_crds()
        self.cluster.kubectl("apply", "-k", str(self.kustomization))
        self.wait_available(timeout=timeout)

    def wait_available(self, *, timeout: float = 240.0) -> None:
        result = self.cluster.kubectl(
            "rollout", "status", f"deployment/{DEPLOYMENT}", "-n", NAMESPACE, f"--timeout={timeout:.0f}s",
            check=False, timeout=timeout + 30,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(
                f"the operator's Deployment did not become available:\n{result.stdout}{result.stderr}\n"
                f"{self.diagnosis()}"
            )

    def uninstall(self, *, timeout: float = 120.0) -> None:
        """`kubectl delete -k`, waiting until what it deletes is gone."""
        self.cluster.kubectl(
            "delete", "-k", str(self.kustomization), "--ignore-not-found", "--wait=true",
            f"--timeout={timeout:.0f}s", timeout=timeout + 30,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ the pods

    def pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", POD_SELECTOR, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[str]:
        def ready(pod: dict[str, Any]) -> bool:
            conditions = pod.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        return sorted(pod["metadata"]["name"] for pod in self.pods() if ready(pod))

    def lease(self) -> dict[str, Any]:
        result = self.cluster.kubectl("get", "lease", LEASE, "-n", NAMESPACE, "-o", "json", check=False)
        spec: dict[str, Any] = json.loads(result.stdout).get("spec", {}) if result.returncode == 0 else {}
        return spec

    def holder(self) -> str | None:
        """The pod holding the Lease (identities are `<pod>_<random>`), if one holds it."""
        identity = self.lease().get("holderIdentity")
        return str(identity).rsplit("_", 1)[0] if identity else None

    def leader(self, *, timeout: float = 60.0, other_than: str | None = None) -> str:
        """The pod holding the Lease, once it is one of the running, ready pods (and not `other_than`)."""

        def running_holder() -> str | None:
            holder = self.holder()
            return holder if holder in self.ready_pods() and holder != other_than else None

        return _wait(running_holder, timeout=timeout, what="an operator pod holding the Lease")

    def delete_pod(self, name: str) -> None:
        self.cluster.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")

    def logs(self, pod: str, *, tail: int | None = None, previous: bool = False) -> str:
        args = ["logs", pod, "-n", NAMESPACE, *([f"--tail={tail}"] if tail else [])]
        if previous:
            args.append("--previous")
        result = self.cluster.kubectl(*args, check=False)
        return result.stdout + result.stderr

    def restarts(self) -> dict[str, int]:
        return {
            pod["metadata"]["name"]: sum(
                int(c.get("restartCount", 0)) for c in pod.get("status", {}).get("containerStatuses") or []
            )
            for pod in self.pods()
        }

    def diagnosis(self, *, lines: int = 40) -> str:
        """The pods, their events and their logs' tails: what a failed install needs to be understood."""
        parts = [
            self.cluster.kubectl("get", "pods,events", "-n", NAMESPACE, "-o", "wide", check=False).stdout,
        ]
        for pod in self.pods():
            name = pod["metadata"]["name"]
            parts.append(
                f"===== kubectl logs {name} (last {lines} lines) =====\n{self.logs(name, tail=lines)}"
            )
        return "\n".join(parts)

    def log_locations(self) -> Sequence[str]:
        """Where a user finds the operator's logs (the demo prints these)."""
        return [
            f"kubectl logs -n {NAMESPACE} {pod}" for pod in sorted(p["metadata"]["name"] for p in self.pods())
        ]
