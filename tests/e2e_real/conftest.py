"""One local cluster with a real node per session (containerd, kubelet and kube-proxy in a network
namespace of their own, beside the kwok node); a namespace per test.

Needs root, the node's binaries (make node-binaries) and Debian packages (make node-packages: runc,
iptables, socat, ...). Without them the tier is skipped with the reason, unless
ALIASROLL_REQUIRE_REAL_NODE=1 (CI), where a missing prerequisite fails instead.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localkube import ClusterError, LocalCluster, RealNode, resolve_bin_dir
from localkube.node import pod_placement

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "ALIASROLL_REQUIRE_REAL_NODE"
_namespaces = itertools.count(1)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        _unavailable("the real node needs root (network namespace, mounts, cgroups)")
    try:
        RealNode.check_prerequisites(resolve_bin_dir(node=True))
    except ClusterError as e:
        _unavailable(str(e))
    state = REPO / ".work" / "e2e-real-cluster"
    if state.exists():
        LocalCluster(state).stop()  # a previous session that was killed
    with LocalCluster(state, real_node=True) as local:
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
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
