"""The optional NetworkPolicies (manifests/components/network-policies) apply cleanly to the real API
server, as the README's "NetworkPolicies" says to add them: the operator's beside the install
(a dry run on the server: the session's install is shared with the other tests), and the serving ones in
a tenant namespace (applied, read back as the API server stored them, and removed with the
namespace). This control plane enforces no NetworkPolicy (kwok's pods have no network);
tests/e2e_real/test_network_policies_real.py proves them enforced on the real node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import OPERATOR_NAMESPACE

from localcluster import LocalCluster
from support.netpol import write_operator_install, write_serving_policies

pytestmark = pytest.mark.e2e


def _policies(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "networkpolicies", "-n", namespace, "-o", "json").stdout)[
        "items"
    ]
    return {item["metadata"]["name"]: item for item in items}


def test_the_install_with_the_operator_policy_applies(cluster: LocalCluster, tmp_path: Path) -> None:
    folder = write_operator_install(tmp_path / "install")
    # As the README installs: `kubectl apply -k` (the session applied manifests/ the same way).
    result = cluster.kubectl("apply", "--dry-run=server", "-k", str(folder))
    assert "networkpolicy.networking.k8s.io/aliasroll-operator created (server dry run)" in result.stdout
    # The rest is the install itself, as the session applied it.
    assert "deployment.apps/aliasroll unchanged (server dry run)" in result.stdout
    assert "aliasroll-operator" not in _policies(cluster, OPERATOR_NAMESPACE)


@pytest.mark.parametrize("gateway_canary", [False, True], ids=["serving", "serving+gateway-canary"])
def test_the_serving_policies_apply_in_a_tenant_namespace(
    cluster: LocalCluster, namespace: str, tmp_path: Path, gateway_canary: bool
) -> None:
    folder = write_serving_policies(tmp_path / "serving", namespace, gateway_canary=gateway_canary)
    rendered = cluster.kubectl("kustomize", str(folder)).stdout
    cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=rendered)
    cluster.kubectl("apply", "--server-side", "-f", "-", input=rendered)
    stored = _policies(cluster, namespace)
    expected = {"aliasroll-serving-egress", "aliasroll-serving-ingress"}
    if gateway_canary:
        expected.add("aliasroll-canary-ingress")
    assert set(stored) == expected
    ingress = stored["aliasroll-serving-ingress"]["spec"]
    # Named ports survive as names (they resolve against each pod's container ports).
    assert ingress["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    if gateway_canary:
        assert ingress["podSelector"]["matchLabels"]["aliasroll.io/track"] == "production"
        canary = stored["aliasroll-canary-ingress"]["spec"]
        assert canary["podSelector"]["matchLabels"]["aliasroll.io/track"] == "canary"
    else:
        assert "aliasroll.io/track" not in ingress["podSelector"]["matchLabels"]
    # Applying again changes nothing (no field the server defaults differently).
    again = cluster.kubectl("apply", "--server-side", "-f", "-", input=rendered).stdout
    assert again.count("serverside-applied") == len(expected)
    assert {name: item["spec"] for name, item in _policies(cluster, namespace).items()} == {
        name: item["spec"] for name, item in stored.items()
    }
