"""The optional NetworkPolicies (manifests/components/network-policies), rendered by kubectl's kustomize
as users render them, select the pods and ports the operator really makes: the planner's Deployments
and Services for a sample ModelDeployment, and the operator's own Deployment and Service from
manifests/. Who may connect to whom is then judged with NetworkPolicy's rules (tests/support/netpol.py):
what docs/operations/security.md ("NetworkPolicies") promises is allowed, and its refusals are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localkube.bins import resolve_bin_dir
from support.netpol import (
    REPO,
    Endpoint,
    allowed,
    egress_allowed,
    external,
    from_template,
    ingress_allowed,
    planned_objects,
    pod,
    pod_templates,
    render,
    selector_matches,
    selects,
    write_operator_install,
    write_serving_policies,
)

TENANT = "team-a"
OTHER = "team-b"
OPERATOR_NAMESPACE = "aliasroll-system"
NAME = "sentiment"
SERVING_PORT = 8080  # spec.serving.port's default: the container port named `http`


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return resolve_bin_dir() / "kubectl"


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.fixture(scope="module")
def install(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(kubectl, write_operator_install(tmp_path_factory.mktemp("install")))


@pytest.fixture(scope="module")
def gateway_policies(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("gateway")
    return render(kubectl, write_serving_policies(folder, TENANT, gateway_canary=True))


@pytest.fixture(scope="module")
def serving_policies(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("serving")
    return render(kubectl, write_serving_policies(folder, TENANT, gateway_canary=False))


@pytest.fixture(scope="module")
def operator_pod(install: list[dict[str, Any]]) -> Endpoint:
    deployment = by_name(install, "Deployment")["aliasroll"]
    return from_template(OPERATOR_NAMESPACE, deployment["spec"]["template"])


def tracks(router: str) -> tuple[dict[str, Any], dict[str, Endpoint]]:
    objects = planned_objects(namespace=TENANT, name=NAME, router=router)
    templates = pod_templates(objects)
    assert set(templates) == {f"{NAME}-production", f"{NAME}-canary"}
    return (
        {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Service"},
        {name.removeprefix(f"{NAME}-"): from_template(TENANT, t) for name, t in templates.items()},
    )


def scrape_port(track: Endpoint) -> int:
    """Where a serving pod answers /metrics: its admin port, or its serving port where it has none."""
    return track.ports.get("admin", track.ports["http"])


# Clients, as their namespaces are labelled.
CLIENT = pod(OTHER, {"app": "client"})
NEIGHBOUR = pod(TENANT, {"app": "client"})  # a pod in the tenant's own namespace
GATEWAY = pod("gateways", {"app": "envoy"}, ns_labels={"aliasroll.io/gateway": "true"})
PROMETHEUS = pod("monitoring", {"app": "prometheus"}, ns_labels={"aliasroll.io/metrics-scraper": "true"})
MLFLOW = pod(
    "mlflow", {"app": "mlflow"}, ports={"http": 5000}, ns_labels={"aliasroll.io/model-source": "true"}
)
WEBHOOK_SENDER = pod("mlflow", {"app": "mlflow"}, ns_labels={"aliasroll.io/webhook-sender": "true"})
DNS = pod("kube-system", {"k8s-app": "kube-dns"})
OTHER_SERVICE = pod(OTHER, {"app": "database"}, ports={"postgres": 5432})
# The operator's pod as manifests/operator.yaml labels it (the fixture operator_pod reads it from there).
OPERATOR = pod(
    OPERATOR_NAMESPACE, {"app.kubernetes.io/name": "aliasroll", "app.kubernetes.io/component": "operator"}
)


# ------------------------------------------------------------------------------ the rendered components


def test_the_components_render_network_policies_only_in_the_namespaces_asked(
    install: list[dict[str, Any]],
    gateway_policies: list[dict[str, Any]],
    serving_policies: list[dict[str, Any]],
) -> None:
    [operator_policy] = [doc for doc in install if doc["kind"] == "NetworkPolicy"]
    assert operator_policy["metadata"] | {"labels": None} == {
        "name": "aliasroll-operator",
        "namespace": OPERATOR_NAMESPACE,
        "labels": None,
    }
    assert set(by_name(serving_policies, "NetworkPolicy")) == {
        "aliasroll-serving-egress",
        "aliasroll-serving-ingress",
    }
    assert set(by_name(gateway_policies, "NetworkPolicy")) == {
        "aliasroll-serving-egress",
        "aliasroll-serving-ingress",
        "aliasroll-canary-ingress",
    }
    assert {doc["kind"] for doc in serving_policies + gateway_policies} == {"NetworkPolicy"}
    assert {doc["metadata"]["namespace"] for doc in serving_policies + gateway_policies} == {TENANT}
    # The rest of the install is what manifests/ alone renders: the component only adds.
    assert sum(doc["kind"] == "NetworkPolicy" for doc in install) == 1


def test_the_documented_narrowing_patches_find_their_rules(
    install: list[dict[str, Any]], serving_policies: list[dict[str, Any]]
) -> None:
    # The docs' "NetworkPolicies" narrows rules by their index: the operator's API server rule
    # (/spec/egress/1) and HTTPS rule (/spec/egress/4), the serving pods' HTTPS rule (/spec/egress/2).
    operator = by_name(install, "NetworkPolicy")["aliasroll-operator"]["spec"]["egress"]
    assert {p["port"] for p in operator[1]["ports"]} == {443, 6443}
    assert operator[1]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    serving = by_name(serving_policies, "NetworkPolicy")["aliasroll-serving-egress"]["spec"]["egress"]
    for rule in (operator[4], serving[2]):
        assert rule["ports"] == [{"port": 443, "protocol": "TCP"}]
        assert [peer["ipBlock"]["cidr"] for peer in rule["to"]] == ["0.0.0.0/0", "::/0"]
    docs = (REPO / "docs" / "operations" / "security.md").read_text()
    assert "path: /spec/egress/1/to" in docs
    assert "path: /spec/egress/4/to" in docs
    assert "/spec/egress/2 is the HTTPS rule" in docs


# ------------------------------------------------------------------------------ the operator's pods


def test_the_operator_policy_selects_the_operator_s_pods_and_its_named_ports(
    install: list[dict[str, Any]], operator_pod: Endpoint
) -> None:
    policy = by_name(install, "NetworkPolicy")["aliasroll-operator"]
    assert selects(policy, operator_pod)
    named = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert named <= set(operator_pod.ports), f"ports {named} are not all container ports of the operator"
    # The Service's ports are the ones admitted.
    service = by_name(install, "Service")["aliasroll"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == named
    assert selector_matches({"matchLabels": service["spec"]["selector"]}, operator_pod.pod_labels or {})


def test_the_operator_admits_webhooks_and_scrapes_only_from_their_namespaces(
    install: list[dict[str, Any]], operator_pod: Endpoint
) -> None:
    webhooks, metrics, health = (operator_pod.ports[n] for n in ("webhooks", "metrics", "health"))
    assert ingress_allowed(install, source=WEBHOOK_SENDER, target=operator_pod, port=webhooks)
    assert ingress_allowed(install, source=PROMETHEUS, target=operator_pod, port=metrics)
    for refused in (CLIENT, NEIGHBOUR, GATEWAY):
        for port in (webhooks, metrics, health):
            assert not ingress_allowed(install, source=refused, target=operator_pod, port=port), (
                refused,
                port,
            )
    assert not ingress_allowed(install, source=WEBHOOK_SENDER, target=operator_pod, port=metrics)
    assert not ingress_allowed(install, source=PROMETHEUS, target=operator_pod, port=webhooks)


def test_the_operator_reaches_dns_registries_and_serving_pods_but_not_other_services(
    install: list[dict[str, Any]], operator_pod: Endpoint
) -> None:
    _, pods = tracks("gatewayAPI")
    assert egress_allowed(install, source=operator_pod, target=DNS, port=53, protocol="UDP")
    assert egress_allowed(install, source=operator_pod, target=MLFLOW, port=5000)
    assert egress_allowed(install, source=operator_pod, target=PROMETHEUS, port=9090)
    for track in pods.values():
        assert egress_allowed(install, source=operator_pod, target=track, port=SERVING_PORT)
    assert egress_allowed(
        install, source=operator_pod, target=external("203.0.113.7"), port=443
    )  # hosted MLflow
    assert not egress_allowed(install, source=operator_pod, target=OTHER_SERVICE, port=5432)
    assert not egress_allowed(install, source=operator_pod, target=CLIENT, port=SERVING_PORT)
    assert not egress_allowed(install, source=operator_pod, target=external("169.254.169.254"), port=80)
    assert not egress_allowed(install, source=operator_pod, target=external("10.3.0.7"), port=9200)
    assert not egress_allowed(install, source=operator_pod, target=external("203.0.113.7"), port=22)


# ------------------------------------------------------------------------------ serving pods


@pytest.mark.parametrize("router", ["replicas", "gatewayAPI"])
def test_the_serving_policies_select_both_tracks_pods_and_their_port(
    serving_policies: list[dict[str, Any]], router: str
) -> None:
    services, pods = tracks(router)
    policies = by_name(serving_policies, "NetworkPolicy")
    for track in pods.values():
        assert selects(policies["aliasroll-serving-egress"], track)
        assert selects(policies["aliasroll-serving-ingress"], track)
        assert track.ports["http"] == SERVING_PORT
        # Every named port the policies admit to is one of the pods' ports, or one the pods may not have
        # (`admin`, where the serving image answers /metrics on a port of its own).
        named = {
            port["port"]
            for policy in serving_policies
            for rule in policy["spec"].get("ingress", [])
            for port in rule["ports"]
            if isinstance(port["port"], str)
        }
        assert named - set(track.ports) <= {"admin"}
    # Every Service the operator makes reaches its pods on the port clients are admitted to.
    for service in services.values():
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    client_rule = policies["aliasroll-serving-ingress"]["spec"]["ingress"][0]
    assert "from" not in client_rule
    assert {p["port"] for p in client_rule["ports"]} == {"http"}


def test_without_gateway_canary_every_track_takes_clients_as_the_replicas_router_needs(
    serving_policies: list[dict[str, Any]],
) -> None:
    services, pods = tracks("replicas")
    # The replicas router's one Service selects both tracks: clients must reach the canary's pods too.
    assert set(services) == {NAME}
    selector = {"matchLabels": services[NAME]["spec"]["selector"]}
    assert all(selector_matches(selector, track.pod_labels or {}) for track in pods.values())
    for track in pods.values():
        for client in (CLIENT, NEIGHBOUR, GATEWAY):
            assert ingress_allowed(serving_policies, source=client, target=track, port=SERVING_PORT)
            assert not ingress_allowed(serving_policies, source=client, target=track, port=9999)
            if "admin" in track.ports:
                assert not ingress_allowed(
                    serving_policies, source=client, target=track, port=track.ports["admin"]
                )
        for scraper in (PROMETHEUS, OPERATOR):
            assert ingress_allowed(serving_policies, source=scraper, target=track, port=scrape_port(track))


def test_with_gateway_canary_the_canary_takes_only_the_gateway_the_operator_and_prometheus(
    install: list[dict[str, Any]], gateway_policies: list[dict[str, Any]], operator_pod: Endpoint
) -> None:
    services, pods = tracks("gatewayAPI")
    canary, production = pods["canary"], pods["production"]
    policy = by_name(gateway_policies, "NetworkPolicy")["aliasroll-canary-ingress"]
    # The Service `<name>-canary` leads to exactly the pods the canary policy guards.
    canary_service = {"matchLabels": services[f"{NAME}-canary"]["spec"]["selector"]}
    assert selector_matches(canary_service, canary.pod_labels or {})
    assert not selector_matches(canary_service, production.pod_labels or {})
    assert selects(policy, canary)
    assert not selects(policy, production)
    assert ingress_allowed(gateway_policies, source=GATEWAY, target=canary, port=SERVING_PORT)
    for source in (PROMETHEUS, operator_pod):
        assert ingress_allowed(gateway_policies, source=source, target=canary, port=scrape_port(canary)), (
            source
        )
    for source in (CLIENT, NEIGHBOUR, WEBHOOK_SENDER, MLFLOW):
        for port in set(canary.ports.values()):
            assert not ingress_allowed(gateway_policies, source=source, target=canary, port=port), (
                source,
                port,
            )
    if "admin" in canary.ports:
        assert not ingress_allowed(
            gateway_policies, source=GATEWAY, target=canary, port=canary.ports["admin"]
        )
    # Production (the Service `<name>`, which clients may call bypassing the Gateway) takes clients.
    assert selector_matches({"matchLabels": services[NAME]["spec"]["selector"]}, production.pod_labels or {})
    for source in (CLIENT, NEIGHBOUR, GATEWAY):
        assert ingress_allowed(gateway_policies, source=source, target=production, port=SERVING_PORT), source
    for source in (PROMETHEUS, operator_pod):
        assert ingress_allowed(
            gateway_policies, source=source, target=production, port=scrape_port(production)
        )
    # The whole path: the operator's egress and the canary's ingress agree on its scrape.
    assert allowed(install + gateway_policies, source=operator_pod, target=canary, port=scrape_port(canary))
    assert not allowed(install + gateway_policies, source=CLIENT, target=canary, port=SERVING_PORT)


def test_serving_pods_reach_dns_model_sources_and_public_https_only(
    serving_policies: list[dict[str, Any]],
) -> None:
    _, pods = tracks("gatewayAPI")
    for track in pods.values():
        assert egress_allowed(serving_policies, source=track, target=DNS, port=53, protocol="UDP")
        assert egress_allowed(serving_policies, source=track, target=DNS, port=53, protocol="TCP")
        assert egress_allowed(serving_policies, source=track, target=MLFLOW, port=5000)
        assert egress_allowed(serving_policies, source=track, target=external("151.101.0.223"), port=443)
        assert egress_allowed(serving_policies, source=track, target=external("2a04:4e42::223"), port=443)
        refused = [
            (OTHER_SERVICE, 5432),
            (NEIGHBOUR, 80),
            (pods["production" if track is pods["canary"] else "canary"], SERVING_PORT),
            (OPERATOR, 8081),
            (DNS, 8080),
            (external("169.254.169.254"), 80),
            (external("10.0.0.1"), 443),  # the API server's ClusterIP, or any private service
            (external("192.168.1.5"), 443),
            (external("151.101.0.223"), 22),
            (external("fd00:ec2::254"), 443),
        ]
        for target, port in refused:
            assert not egress_allowed(serving_policies, source=track, target=target, port=port), (
                target,
                port,
            )
