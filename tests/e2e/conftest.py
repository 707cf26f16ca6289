"""One control plane and one operator per session; a namespace per test.

`make test` may run this tier as more than one session side by side (hack/tiers.py), each with a
cluster of its own: ALIASROLL_E2E_RUN names a session's state dir and operator log under .work
(default e2e).

The operator runs as `python -m aliasroll` with a token minted for its own ServiceAccount, bound by
the RBAC in manifests/, so a missing rule fails these tests.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OTHER_REGISTRY,
    OTHER_REGISTRY_URI,
    OTHER_WEBHOOK_SECRET,
    REPO,
    RUN,
    WEBHOOK_REGISTRY,
    WEBHOOK_SECRET,
    Deploy,
    Kube,
    wait_for,
)
from mlflow import MlflowClient

from localcluster import LocalCluster
from mlflowserver import MlflowServer, free_port
from operatorprocess import OperatorProcess

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    state = REPO / ".work" / f"{RUN}-cluster"
    if state.exists():
        LocalCluster(state).stop()  # a previous session that was killed
        shutil.rmtree(state, ignore_errors=True)
    with LocalCluster(state) as local:
        local.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        # Polled rather than `kubectl wait --for=condition`, which fails at once ("accessor error")
        # when it reads the CRD between its creation and its first status conditions; for the same
        # reason a failing jsonpath (no conditions yet) is just "not yet".
        wait_for(
            lambda: (
                local.kubectl(
                    "get",
                    "crd/modeldeployments.aliasroll.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                    check=False,
                ).stdout
                == "True"
            ),
            timeout=60,
            what="the ModelDeployment CRD Established",
        )
        local.install_gateway_api_crds()
        local.kubectl("apply", "-k", str(REPO / "manifests"))
        yield local


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster) -> Iterator[Kube]:
    kube = Kube(cluster)
    yield kube
    kube.close()


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    token = cluster.mint_token(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=24 * 3600)
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = cluster.write_kubeconfig_for_token(workdir / "kubeconfig", token)
    # The webhook registries, as the Deployment mounts them from the Secret aliasroll-webhooks.
    registries = workdir / "registries.yaml"
    registries.write_text(
        json.dumps(
            {
                WEBHOOK_REGISTRY: {"trackingUri": mlflow_server.url, "secret": WEBHOOK_SECRET},
                OTHER_REGISTRY: {"trackingUri": OTHER_REGISTRY_URI, "secret": OTHER_WEBHOOK_SECRET},
            }
        )
    )
    process = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=REPO / ".work" / f"{RUN}-operator.log",
        verbose=True,
        env={
            # Short delays, so outages and recoveries show within a test's patience.
            "ALIASROLL_REGISTRY_TIMEOUT": "2",
            "ALIASROLL_REGISTRY_MAX_BACKOFF": "2",
            "ALIASROLL_RETRY_MAX": "3",
            "ALIASROLL_SERVING_IMAGE": "aliasroll/serving:e2e",
            # The classes test_pods.py creates (the operator refuses any class it does not list).
            "ALIASROLL_ALLOWED_RUNTIME_CLASSES": "serving-*",
            "ALIASROLL_ALLOWED_PRIORITY_CLASSES": "serving-*",
            # Push and metrics on loopback, as the Deployment in manifests/ has them on the pod's ports.
            "ALIASROLL_WEBHOOK_REGISTRIES": str(registries),
            "ALIASROLL_WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}",
            "ALIASROLL_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    process.log_path.unlink(missing_ok=True)
    process.start()
    yield process
    process.stop()
    # A pass that crashed was retried and may have converged anyway: still a bug, never quiet.
    crashes = [line for line in process.log_path.read_text().splitlines() if "reconcile pass failed" in line]
    assert not crashes, "the operator crashed in passes:\n" + "\n".join(crashes[:5])


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster: LocalCluster) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{next(_namespaces)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    # ModelDeployments first, while the operator (if any) still runs; then the namespace.
    cluster.kubectl("delete", "modeldeployments", "--all", "-n", name, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def deploy(kube: Kube, registry: MlflowClient, namespace: str) -> Deploy:
    """The prologue most tests share: `deploy(manifest, versions=2, ready="1", production="1")`
    registers two versions of the manifest's model, points @production at 1, applies the
    ModelDeployment and returns it once Ready at version 1 (harness.Deploy)."""
    return Deploy(kube, registry, namespace)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        if "operator" in funcargs:
            report.sections.append(("operator log (tail)", funcargs["operator"].log_tail(80)))
        if "cluster" in funcargs:
            report.sections.append(("control plane logs (tails)", funcargs["cluster"].log_tails(15)))
        if "namespace" in funcargs and "kube" in funcargs:
            kube: Kube = funcargs["kube"]
            out = kube.cluster.kubectl(
                "get",
                "mdep,deploy,svc,httproute,events",
                "-n",
                funcargs["namespace"],
                "-o",
                "wide",
                check=False,
            )
            report.sections.append(("namespace objects", out.stdout + out.stderr))
    return report
