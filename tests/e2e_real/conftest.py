"""One local cluster with a real node per session (containerd, kubelet and kube-proxy in a network
namespace of their own, beside the kwok node), the CRD and the operator (inside the node's namespace,
with its ServiceAccount's token); a namespace per test, and for the serving tests a RealStack.

`make test` runs two sessions of this tier side by side (hack/tiers.py: test_transitions.py in one,
the rest in the other), each with its own cluster: ALIASROLL_E2E_REAL_RUN names a session's state
dir and operator log under .work (default e2e-real).

Needs root, the node's binaries (make node-binaries) and Debian packages (make node-packages: runc,
iptables, socat, ...). Without them the tier is skipped with the reason, unless
ALIASROLL_REQUIRE_REAL_NODE=1 (CI), where a missing prerequisite fails instead.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from mlflow import MlflowClient
from realstack import RealStack

from localkube import LocalCluster, RealNode
from localkube.node import pod_placement
from mlflowserver import MlflowServer, free_port
from operatorprocess import OperatorProcess
from support.realcluster import real_node_cluster
from support.webhook_bridge import node_port_on_host

REPO = Path(__file__).resolve().parents[2]
RUN = os.environ.get("ALIASROLL_E2E_REAL_RUN", "e2e-real")
OPERATOR_NAMESPACE = "aliasroll-system"
# The operator's one webhook registry: the session's MLflow server, as the pods and the operator name
# it (tracking_uri). A test that wants its moves pushed registers a webhook with `push` (no test does
# unless it asks: the others stay poll-only).
WEBHOOK_REGISTRY = "real"
WEBHOOK_SECRET = "Qx7Lm2Vb9Tn4Rc8Wd1Hs6Kp3Jf5Yg0Za"
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with real_node_cluster(RUN) as local:
        yield local


@pytest.fixture(scope="session")
def node(cluster: LocalCluster) -> RealNode:
    return cluster.node


@pytest.fixture(scope="session")
def placement() -> dict[str, Any]:
    """nodeSelector and tolerations that put a pod on the real node."""
    return pod_placement()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{next(_namespaces)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def installed(cluster: LocalCluster) -> LocalCluster:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    wait_for(
        lambda: (
            "Established"
            in cluster.kubectl(
                "get", "crd", "modeldeployments.aliasroll.io", "-o", "jsonpath={.status.conditions[*].type}"
            ).stdout
        ),
        timeout=60,
        what="the CRD Established",
    )
    cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    return cluster


@pytest.fixture(scope="session")
def serving_image(node: RealNode) -> str:
    return node.load_images(["serving"])["serving"]


@pytest.fixture(scope="session")
def tracking_uri(node: RealNode, mlflow_server: MlflowServer) -> str:
    """The MLflow server as the operator and the pods see it, from inside the node's namespace."""
    address, port = node.expose_host_port(mlflow_server.port)
    return f"http://{address}:{port}"


@pytest.fixture(scope="session")
def webhook_address(node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(host address, in-node port): the operator listens for webhooks on 127.0.0.1:<in-node port>
    inside the node's namespace, and the MLflow server (on the host) delivers to the host address
    (support/webhook_bridge.py)."""
    inside = free_port()
    with node_port_on_host(node, inside, tmp_path_factory.mktemp("webhook-bridge")) as outside:
        yield outside, inside


@pytest.fixture(scope="session")
def operator(
    installed: LocalCluster,
    node: RealNode,
    tracking_uri: str,
    webhook_address: tuple[str, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    token = installed.mint_token(OPERATOR_NAMESPACE, "aliasroll", expiration_seconds=24 * 3600)
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = installed.write_kubeconfig_for_token(workdir / "kubeconfig", token)
    # Inside the namespace the API server is reached through its bridge on 127.0.0.1:6443.
    text = kubeconfig.read_text().replace(installed.server, "https://127.0.0.1:6443")
    kubeconfig.write_text(text)
    # The operator's dependency cache, as README "Model dependencies" sets it up: a node directory of
    # mode 1777, whose namespace subdirectories the kubelet makes with the same mode (subPath).
    dependency_cache = tmp_path_factory.mktemp("dependency-cache")
    dependency_cache.chmod(0o1777)
    registries = workdir / "webhook-registries.json"
    registries.write_text(
        json.dumps({WEBHOOK_REGISTRY: {"trackingUri": tracking_uri, "secret": WEBHOOK_SECRET}})
    )
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=REPO / ".work" / f"{RUN}-operator.log",
        verbose=True,
        netns=node.netns,
        env={
            "ALIASROLL_REGISTRY_TIMEOUT": "2",
            "ALIASROLL_REGISTRY_MAX_BACKOFF": "2",
            "ALIASROLL_RETRY_MAX": "3",
            # A version that cannot load stalls within the test's patience.
            "ALIASROLL_PROGRESS_DEADLINE": "40",
            "ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": str(dependency_cache),
            "ALIASROLL_WEBHOOK_REGISTRIES": str(registries),
            "ALIASROLL_WEBHOOK_LISTEN": f"127.0.0.1:{webhook_address[1]}",
        },
    )
    process.log_path.unlink(missing_ok=True)
    process.start(timeout=120)
    yield process
    process.stop()


@pytest.fixture
def push(
    registry: MlflowClient, operator: OperatorProcess, webhook_address: tuple[str, int]
) -> Iterator[None]:
    """The session's MLflow server delivers alias moves to the operator by webhook (README "Push"),
    for the length of the test; the server's cached webhook list (1 s here) holds it once this
    returns."""
    created = registry.create_webhook(
        name=f"aliasroll-real-{next(_namespaces)}",
        url=f"http://{webhook_address[0]}/webhooks/mlflow/{WEBHOOK_REGISTRY}",
        events=["model_version_alias.created", "model_version_alias.deleted"],
        secret=WEBHOOK_SECRET,
    )
    time.sleep(1.5)
    yield
    registry.delete_webhook(created.webhook_id)


@pytest.fixture
def stack(
    installed: LocalCluster,
    node: RealNode,
    operator: OperatorProcess,
    mlflow_server: MlflowServer,
    registry: MlflowClient,
    tracking_uri: str,
    serving_image: str,
    placement: dict[str, Any],
    namespace: str,
    model_name: str,
    tmp_path: Path,
) -> Iterator[RealStack]:
    stack = RealStack(
        cluster=installed,
        node=node,
        mlflow=mlflow_server,
        registry=registry,
        tracking_uri=tracking_uri,
        image=serving_image,
        placement=placement,
        namespace=namespace,
        model=model_name,
        tmp=tmp_path,
    )
    yield stack
    stack.kube.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        if "operator" in funcargs:
            report.sections.append(("operator log (tail)", funcargs["operator"].log_tail(80)))
        if "cluster" in funcargs:
            cluster: LocalCluster = funcargs["cluster"]
            report.sections.append(("cluster logs (tails)", cluster.log_tails(20)))
            if "namespace" in funcargs:
                out = cluster.kubectl(
                    "get",
                    "pods,svc,endpointslices,events",
                    "-n",
                    funcargs["namespace"],
                    "-o",
                    "wide",
                    check=False,
                )
                report.sections.append(("namespace objects", out.stdout + out.stderr))
    return report
