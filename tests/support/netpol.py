"""The optional NetworkPolicies (manifests/components/network-policies) as users render them, the
objects the planner makes for a sample ModelDeployment, and the part of NetworkPolicy's semantics
the tests judge the policies by.

Users add the components in kustomizations of their own (kustomize refuses one that includes its own
parent folder): the operator's beside the install, the serving ones per tenant namespace. These
helpers write the same kustomizations in a folder of the test's own.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from aliasroll.planning.planner import plan
from aliasroll.planning.state import AliasTarget, ObservedState, ObservedWorkload, RegistryView
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.types import VersionInfo
from aliasroll.spec import ResourceRef, Track, parse_spec

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
COMPONENTS = MANIFESTS / "components" / "network-policies"
OPERATOR_COMPONENT = COMPONENTS / "operator"
SERVING_COMPONENT = COMPONENTS / "serving"
GATEWAY_CANARY_COMPONENT = COMPONENTS / "gateway-canary"

Manifest = dict[str, Any]


def _relative(target: Path, folder: Path) -> str:
    return os.path.relpath(target, folder)  # kustomize refuses absolute paths


def write_operator_install(folder: Path) -> Path:
    """The install with the operator's NetworkPolicy: `kubectl apply -k folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [_relative(MANIFESTS, folder)],
        "components": [_relative(OPERATOR_COMPONENT, folder)],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


def write_serving_policies(folder: Path, namespace: str, *, gateway_canary: bool) -> Path:
    """A tenant namespace's serving policies: `kubectl apply -k folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    components = [SERVING_COMPONENT, *([GATEWAY_CANARY_COMPONENT] if gateway_canary else [])]
    content = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "components": [_relative(c, folder) for c in components],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


def render(kubectl: Path | str, folder: Path) -> list[Manifest]:
    """`kubectl kustomize folder`, as documents."""
    result = subprocess.run(
        [str(kubectl), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# ------------------------------------------------------------------------------ the planner's objects


def planned_objects(
    *,
    namespace: str,
    name: str = "sentiment",
    router: str = "gatewayAPI",
    image: str = "ghcr.io/aliasroll/serving:test",
) -> list[Manifest]:
    """What the operator applies for a ModelDeployment whose canary runs beside production (version 2
    under @canary, version 1 in production), both tracks' pods available."""
    traffic: dict[str, Any] = {"router": router}
    if router == "gatewayAPI":
        traffic["gatewayAPI"] = {"parentRefs": [{"name": "public", "namespace": "gateways"}]}
    spec = parse_spec(
        {
            "model": {"name": name, "alias": "production"},
            "registry": {"trackingUri": "http://mlflow.mlflow:5000"},
            "replicas": 2,
            "canary": {"alias": "canary", "weight": 20},
            "traffic": traffic,
        }
    )
    owner = ResourceRef(namespace=namespace, name=name, uid="uid-netpol", generation=1)

    def info(version: str) -> VersionInfo:
        return VersionInfo(model=name, version=version, status="READY", run_id=f"run-{version}", source=None)

    view = RegistryView(
        model=name,
        production=AliasTarget(alias="production", version="1", info=info("1")),
        canary=AliasTarget(alias="canary", version="2", info=info("2")),
    )
    workloads = {
        track: ObservedWorkload(
            name=f"{name}-{track.value}",
            track=track,
            model=name,
            version=version,
            replicas=2,
            available=2,
            rolled_out=True,
            stalled=None,
            run_id=f"run-{version}",
        )
        for track, version in ((Track.PRODUCTION, "1"), (Track.CANARY, "2"))
    }
    result = plan(
        owner=owner,
        spec=spec,
        view=view,
        observed=ObservedState(workloads=workloads),
        previous_status={},
        now=datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
        defaults=WorkloadDefaults(image=image),
    )
    return [dict(obj) for obj in result.objects]


def pod_templates(objects: Iterable[Manifest]) -> dict[str, Manifest]:
    """Each Deployment's pod template, by the Deployment's name."""
    return {
        obj["metadata"]["name"]: obj["spec"]["template"] for obj in objects if obj["kind"] == "Deployment"
    }


# ------------------------------------------------------------------------------ NetworkPolicy semantics


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector against labels ({} selects everything)."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (its namespace's labels, its own labels, its named ports) or,
    with `pod_labels` None, an address outside the cluster's pods."""

    namespace: str | None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    pod_labels: Mapping[str, str] | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # container port name -> number
    address: str | None = None


def pod(
    namespace: str,
    labels: Mapping[str, str],
    *,
    ports: Mapping[str, int] | None = None,
    ns_labels: Mapping[str, str] | None = None,
) -> Endpoint:
    return Endpoint(
        namespace=namespace,
        namespace_labels={"kubernetes.io/metadata.name": namespace, **(ns_labels or {})},
        pod_labels=dict(labels),
        ports=dict(ports or {}),
    )


def external(address: str) -> Endpoint:
    return Endpoint(namespace=None, address=address)


def from_template(namespace: str, template: Manifest) -> Endpoint:
    """A pod of a Deployment's template: its labels and its containers' named ports."""
    ports = {
        port["name"]: port["containerPort"]
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
        if "name" in port
    }
    return pod(namespace, template["metadata"]["labels"], ports=ports)


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.address is None:
            return False
        address = ipaddress.ip_address(other.address)
        block = peer["ipBlock"]
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(
            address.version == ipaddress.ip_network(e).version and address in ipaddress.ip_network(e)
            for e in block.get("except", [])
        )
    if other.pod_labels is None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False  # a podSelector alone selects pods of the policy's own namespace
    return selector_matches(peer.get("podSelector", {}), other.pod_labels)


def _port_matches(
    rule_ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str, target: Endpoint
) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        wanted = item.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            # A named port is the destination pod's container port of that name.
            if target.ports.get(wanted) == port:
                return True
        elif wanted <= port <= item.get("endPort", wanted):
            return True
    return False


def _selecting(policies: Iterable[Manifest], target: Endpoint, policy_type: str) -> list[Manifest]:
    return [
        policy
        for policy in policies
        if policy["kind"] == "NetworkPolicy"
        and target.pod_labels is not None
        and policy["metadata"].get("namespace") == target.namespace
        and policy_type in policy["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(policy["spec"]["podSelector"], target.pod_labels)
    ]


def selects(policy: Manifest, target: Endpoint) -> bool:
    return bool(
        target.pod_labels is not None
        and policy["metadata"].get("namespace") == target.namespace
        and selector_matches(policy["spec"]["podSelector"], target.pod_labels)
    )


def ingress_allowed(
    policies: Iterable[Manifest], *, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the target pod's policies admit a connection from `source` to its `port`."""
    selecting = _selecting(policies, target, "Ingress")
    if not selecting:
        return True
    return any(
        (
            not rule.get("from")
            or any(_peer_matches(peer, target.namespace or "", source) for peer in rule["from"])
        )
        and _port_matches(rule.get("ports"), port, protocol, target)
        for policy in selecting
        for rule in policy["spec"].get("ingress") or []
    )


def egress_allowed(
    policies: Iterable[Manifest], *, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the source pod's policies let it connect to `target`'s `port`."""
    selecting = _selecting(policies, source, "Egress")
    if not selecting:
        return True
    return any(
        (
            not rule.get("to")
            or any(_peer_matches(peer, source.namespace or "", target) for peer in rule["to"])
        )
        and _port_matches(rule.get("ports"), port, protocol, target)
        for policy in selecting
        for rule in policy["spec"].get("egress") or []
    )


def allowed(
    policies: Iterable[Manifest], *, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Both ends agree: the source's egress and the target's ingress."""
    items = list(policies)
    return egress_allowed(
        items, source=source, target=target, port=port, protocol=protocol
    ) and ingress_allowed(items, source=source, target=target, port=port, protocol=protocol)
