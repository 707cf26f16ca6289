"""The install tier: the operator image as pods, installed exactly as users install it.

One local cluster per session whose only node is the real one (containerd, kubelet, kube-proxy in a
network namespace; cluster DNS and the `kubernetes` Service reachable from pods): the kwok node is
removed and the real node's taint (which keeps the other tiers' pods off it) lifted, so the shipped
manifests schedule as on any one-node cluster. The operator and serving images are built from their
Dockerfiles and loaded into the node under the names manifests/ uses; an MLflow server on the host is
`mlflow.mlflow.svc.cluster.local:5000`, the address of manifests/examples/, so those apply unchanged.

Needs root, the node's binaries and Debian packages (as tests/e2e_real). `make test` runs it as a
session of its own (hack/tiers.py); ALIASROLL_E2E_INSTALL_RUN names its state dir under .work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Kube

from localkube import LocalCluster, RealNode
from mlflowserver import MlflowServer
from operatorpods import MLFLOW_ALLOWED_HOSTS, InstalledOperator, host_service, real_node_only
from support.realcluster import real_node_cluster

REPO = Path(__file__).resolve().parents[2]
RUN = os.environ.get("ALIASROLL_E2E_INSTALL_RUN", "e2e-install")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with real_node_cluster(RUN, images=("pause", "operator", "serving")) as local:
        real_node_only(local)  # every pod the install makes runs for real
        yield local


@pytest.fixture(scope="session")
def node(cluster: LocalCluster) -> RealNode:
    return cluster.node


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's MLflow server, answering to its in-cluster name too (as one deployed in a cluster
    must be told to: --allowed-hosts)."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow"), extra_env=MLFLOW_ALLOWED_HOSTS) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_authority(cluster: LocalCluster, node: RealNode, mlflow_server: MlflowServer) -> str:
    """The session's MLflow server at the address manifests/examples/ use."""
    return host_service(
        cluster, node, namespace="mlflow", name="mlflow", port=5000, host_port=mlflow_server.port
    )


@pytest.fixture
def kube(cluster: LocalCluster) -> Iterator[Kube]:
    kube = Kube(cluster)
    yield kube
    kube.close()


@pytest.fixture
def operator_install(cluster: LocalCluster) -> Iterator[InstalledOperator]:
    """The shipped install (manifests/), removed after the test whatever it did."""
    install = InstalledOperator(cluster)
    yield install
    install.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, InstalledOperator):
                report.sections.append(("operator pods", value.diagnosis(lines=80)))
        if "cluster" in funcargs:
            cluster: LocalCluster = funcargs["cluster"]
            report.sections.append(("cluster logs (tails)", cluster.log_tails(20)))
            out = cluster.kubectl("get", "pods,svc,endpointslices,events", "-A", "-o", "wide", check=False)
            report.sections.append(("objects", out.stdout + out.stderr))
    return report
