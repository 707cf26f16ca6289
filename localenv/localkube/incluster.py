"""What pods on the real node get as in-cluster clients, as in a real cluster: endpoints for the
``kubernetes`` Service, and cluster DNS behind the ``kube-dns`` Service.

- ``default/kubernetes`` (ClusterIP 10.0.0.1:443, created by the API server): the API server runs
  with ``--endpoint-reconciler-type=none`` (it would write its loopback address), so the node writes
  an Endpoints object (skip-mirror) and an EndpointSlice (managed by us) pointing at its API server
  bridge on the node's address (``NODE_ADDRESS:6443``), which kube-proxy's DNAT reaches from pods.
- ``kube-system/kube-dns`` (ClusterIP ``DNS_SERVICE_IP``, no selector): its EndpointSlice points at
  CoreDNS (localenv/go/coredns), a process of the node listening on the node's address, port 53 (UDP
  and TCP). Its Corefile answers ``cluster.local`` and the reverse zones of the Service and pod
  ranges from the API server, and NXDOMAIN for every other name: nothing is forwarded, so test
  traffic stays on this machine and an outside name fails at once. kubelet's ``clusterDNS`` names
  the Service's IP, so ClusterFirst pods (the default) resolve ``<service>.<namespace>.svc``.

Pure: the Corefile, the API objects and their paths. node.py applies them; nodecomponents.py starts
CoreDNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .apiserver import SERVICE_CIDR

CLUSTER_DOMAIN = "cluster.local"
#: The ``kubernetes`` Service: the first address of the Service range (the API server's certificate
#: names it).
KUBERNETES_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[1])
#: The ``kube-dns`` Service: a fixed address of the range's low, statically allocated band (the API
#: server hands out dynamic ClusterIPs from the upper part first), as kubeadm's 10.96.0.10.
DNS_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])
DNS_PORT = 53
#: CoreDNS's ``ready`` plugin (200 once its API informers have synced), on the namespace's loopback.
DNS_READY_PORT = 8181
DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
#: The user CoreDNS authenticates as (a client certificate with this CN), bound to a ClusterRole that
#: may only list and watch what the kubernetes plugin reads.
COREDNS_USER = "system:coredns"

#: Who manages the EndpointSlices we write (the EndpointSlice controller leaves other managers' alone).
MANAGED_BY = "localkube.aliasroll.io"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: On an Endpoints object: the EndpointSlice mirroring controller leaves it be (we write the slice).
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: On every object the harness writes, so `kubectl get -l` finds them.
HARNESS_LABEL = ("app.kubernetes.io/managed-by", "localkube")

#: Port = (name, port, protocol).
Port = tuple[str, int, str]

_PLURALS = {
    ("v1", "Service"): "services",
    ("v1", "Endpoints"): "endpoints",
    ("discovery.k8s.io/v1", "EndpointSlice"): "endpointslices",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "clusterroles",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "clusterrolebindings",
}


def reverse_zone(cidr: str) -> str:
    """The in-addr.arpa zone of an IPv4 range whose prefix is a whole number of octets."""
    network = ipaddress.IPv4Network(cidr)
    if network.prefixlen % 8:
        raise ValueError(f"{cidr}: a reverse zone needs a prefix of 8, 16 or 24 bits")
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    return ".".join([*reversed(octets), "in-addr.arpa"])


def corefile(*, listen: str, kubeconfig: Path, reverse_cidrs: Sequence[str]) -> str:
    """CoreDNS's configuration: the cluster's zones from the API server, NXDOMAIN for the rest."""
    zones = [CLUSTER_DOMAIN, *(reverse_zone(c) for c in reverse_cidrs)]
    keys = " ".join(f"{z}:{DNS_PORT}" for z in zones)
    return f"""# Cluster DNS of the local cluster's real node (localenv/localkube/incluster.py).
{keys} {{
    bind {listen}
    errors
    ready 127.0.0.1:{DNS_READY_PORT}
    kubernetes {" ".join(zones)} {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 30
}}

# Every other name: NXDOMAIN at once. No forward plugin: test traffic stays on this machine.
.:{DNS_PORT} {{
    bind {listen}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    key, value = HARNESS_LABEL
    meta: dict[str, Any] = {"name": name, "labels": {key: value, **labels}}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def endpoints(
    namespace: str, service: str, *, address: str, ports: Sequence[Port], node_name: str | None = None
) -> list[dict[str, Any]]:
    """An Endpoints object (skip-mirror) and an EndpointSlice of ours, for a selectorless Service."""
    endpoint: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}}
    if node_name is not None:
        endpoint["nodeName"] = node_name
    target = {"ip": address, **({"nodeName": node_name} if node_name is not None else {})}
    return [
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": _meta(service, namespace, **{SKIP_MIRROR_LABEL: "true"}),
            "subsets": [
                {
                    "addresses": [target],
                    "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
                }
            ],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": _meta(
                service, namespace, **{SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY}
            ),
            "addressType": "IPv4",
            "endpoints": [endpoint],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        },
    ]


def kubernetes_endpoints(*, address: str, port: int) -> list[dict[str, Any]]:
    """``default/kubernetes`` -> the API server's bridge at ``address:port`` (port name ``https``, as
    the API server's own Service port)."""
    return endpoints("default", "kubernetes", address=address, ports=[("https", port, "TCP")])


def dns_objects(*, address: str, node_name: str) -> list[dict[str, Any]]:
    """``kube-system/kube-dns``: the selectorless Service at DNS_SERVICE_IP and its endpoints at
    CoreDNS's listen address (UDP and TCP 53), with kubeadm's labels."""
    ports: list[Port] = [("dns", DNS_PORT, "UDP"), ("dns-tcp", DNS_PORT, "TCP")]
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(DNS_SERVICE, DNS_NAMESPACE, **labels),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": DNS_SERVICE_IP,
            "ports": [{"name": n, "port": p, "protocol": proto, "targetPort": p} for n, p, proto in ports],
        },
    }
    return [
        service,
        *endpoints(DNS_NAMESPACE, DNS_SERVICE, address=address, ports=ports, node_name=node_name),
    ]


def coredns_rbac() -> list[dict[str, Any]]:
    """What COREDNS_USER may do: list and watch Services, EndpointSlices and Namespaces (what the
    kubernetes plugin's informers read; with ``pods insecure`` it reads no pods), as kubeadm's
    ``system:coredns`` role minus the Endpoints and Pods it no longer needs."""
    rules = [
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(COREDNS_USER),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(COREDNS_USER),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COREDNS_USER},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
        },
    ]


def object_path(obj: dict[str, Any]) -> str:
    """The API path of ``obj`` (one of the kinds written here), e.g. for a server-side apply."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = _PLURALS.get((api_version, kind))
    if plural is None:
        raise ValueError(f"no API path known for {api_version} {kind}")
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    meta = obj["metadata"]
    scope = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{prefix}{scope}/{plural}/{meta['name']}"
