"""The real node's in-cluster client support, as text and objects: CoreDNS's Corefile (the cluster's
zones only, nothing forwarded, only plugins the wrapper module compiles in), the Endpoints and
EndpointSlices of the kubernetes and kube-dns Services, CoreDNS's RBAC, and the stdlib DNS client
the node's readiness check uses (against a DNS server on loopback)."""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localkube import dnsclient, incluster
from localkube.apiserver import SERVICE_CIDR
from localkube.node import REAL_NODE_NAME
from localkube.nodenet import NODE_ADDRESS, NODE_POD_CIDR
from localkube.pki import APISERVER_SANS

COREDNS_MAIN = Path(__file__).resolve().parents[3] / "localenv" / "go" / "coredns" / "main.go"
KUBECONFIG = Path("/run/x/coredns.kubeconfig")


def corefile() -> str:
    return incluster.corefile(
        listen=NODE_ADDRESS, kubeconfig=KUBECONFIG, reverse_cidrs=(SERVICE_CIDR, NODE_POD_CIDR)
    )


def server_blocks(text: str) -> dict[str, list[str]]:
    """Server block keys -> the directives (first word of each line at depth 1) of a Corefile."""
    blocks: dict[str, list[str]] = {}
    depth, keys = 0, ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.endswith("{"):
            keys = line[:-1].strip()
            blocks[keys] = []
        elif depth == 1 and line != "}":
            blocks[keys].append(line.split()[0])
        depth += line.count("{") - line.count("}")
    assert depth == 0, "unbalanced braces"
    return blocks


def test_reverse_zones() -> None:
    assert incluster.reverse_zone("10.0.0.0/16") == "0.10.in-addr.arpa"
    assert incluster.reverse_zone("10.245.0.0/24") == "0.245.10.in-addr.arpa"
    assert incluster.reverse_zone("10.0.0.0/8") == "10.in-addr.arpa"
    with pytest.raises(ValueError, match="prefix"):
        incluster.reverse_zone("10.0.0.0/20")


def test_corefile_answers_the_cluster_zones_from_the_api_server() -> None:
    text = corefile()
    blocks = server_blocks(text)
    cluster_keys = "cluster.local:53 0.10.in-addr.arpa:53 0.245.10.in-addr.arpa:53"
    assert set(blocks) == {cluster_keys, ".:53"}
    assert blocks[cluster_keys] == ["bind", "errors", "ready", "kubernetes", "cache"]
    assert "kubernetes cluster.local 0.10.in-addr.arpa 0.245.10.in-addr.arpa {" in text
    assert f"kubeconfig {KUBECONFIG}\n" in text
    assert text.count(f"bind {NODE_ADDRESS}\n") == 2  # every block on the node's address only
    assert f"ready 127.0.0.1:{incluster.DNS_READY_PORT}" in text


def test_corefile_answers_nxdomain_for_everything_else() -> None:
    text = corefile()
    assert server_blocks(text)[".:53"] == ["bind", "errors", "template"]
    assert re.search(r"template ANY ANY \{\s*rcode NXDOMAIN\s*\}", text)
    # Nothing leaves the machine: no plugin that sends queries elsewhere.
    assert not re.search(r"^\s*(forward|grpc|proxy)\b", text, re.MULTILINE)


def test_corefile_uses_only_plugins_compiled_in() -> None:
    listed = re.search(r"var directives = \[\]string\{(.*?)\}", COREDNS_MAIN.read_text(), re.DOTALL)
    assert listed, f"no directives list in {COREDNS_MAIN}"
    directives = re.findall(r'"([a-z_0-9]+)"', listed.group(1))
    used = {d for block in server_blocks(corefile()).values() for d in block}
    assert used <= set(directives), f"Corefile uses {sorted(used - set(directives))}, not compiled in"
    # And each listed plugin is imported (a directive without its plugin fails at start).
    imports = set(re.findall(r'_ "github.com/coredns/coredns/plugin/([a-z_0-9]+)"', COREDNS_MAIN.read_text()))
    assert set(directives) == imports


def test_service_addresses() -> None:
    cidr = ipaddress.ip_network(SERVICE_CIDR)
    assert ipaddress.ip_address(incluster.DNS_SERVICE_IP) in cidr
    assert incluster.KUBERNETES_SERVICE_IP == "10.0.0.1"
    assert incluster.DNS_SERVICE_IP == "10.0.0.10"
    # What in-cluster clients verify the API server's certificate against.
    for san in (
        f"IP:{incluster.KUBERNETES_SERVICE_IP}",
        "DNS:kubernetes.default.svc",
        f"DNS:kubernetes.default.svc.{incluster.CLUSTER_DOMAIN}",
    ):
        assert san in APISERVER_SANS


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects)
    return kinds


def test_kubernetes_service_endpoints() -> None:
    objects = by_kind(incluster.kubernetes_endpoints(address=NODE_ADDRESS, port=6443))
    endpoints, slice_ = objects["Endpoints"], objects["EndpointSlice"]
    for obj in objects.values():
        assert (obj["metadata"]["namespace"], obj["metadata"]["name"]) == ("default", "kubernetes")
    # The mirroring controller must not make a second slice from the Endpoints object.
    assert endpoints["metadata"]["labels"][incluster.SKIP_MIRROR_LABEL] == "true"
    assert endpoints["subsets"] == [
        {"addresses": [{"ip": NODE_ADDRESS}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}
    ]
    labels = slice_["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "kubernetes"
    # Ours, not the EndpointSlice controller's (which would otherwise own and delete it).
    assert labels[incluster.MANAGED_BY_LABEL] == incluster.MANAGED_BY != "endpointslice-controller.k8s.io"
    assert slice_["addressType"] == "IPv4"
    assert slice_["endpoints"] == [{"addresses": [NODE_ADDRESS], "conditions": {"ready": True}}]
    assert slice_["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]


def test_kube_dns_service_and_endpoints() -> None:
    objects = by_kind(incluster.dns_objects(address=NODE_ADDRESS, node_name=REAL_NODE_NAME))
    service, slice_ = objects["Service"], objects["EndpointSlice"]
    for obj in objects.values():
        assert (obj["metadata"]["namespace"], obj["metadata"]["name"]) == ("kube-system", "kube-dns")
    assert "selector" not in service["spec"]
    assert service["spec"]["clusterIP"] == incluster.DNS_SERVICE_IP
    service_ports = {(p["name"], p["protocol"], p["port"]) for p in service["spec"]["ports"]}
    assert service_ports == {("dns", "UDP", 53), ("dns-tcp", "TCP", 53)}
    # kube-proxy pairs Service and endpoint ports by name.
    assert {(p["name"], p["protocol"], p["port"]) for p in slice_["ports"]} == service_ports
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert slice_["endpoints"][0]["addresses"] == [NODE_ADDRESS]
    assert slice_["endpoints"][0]["nodeName"] == REAL_NODE_NAME
    assert objects["Endpoints"]["metadata"]["labels"][incluster.SKIP_MIRROR_LABEL] == "true"


def test_coredns_may_only_read() -> None:
    role, binding = incluster.coredns_rbac()
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"list", "watch"}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"services", "namespaces", "endpointslices"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": incluster.COREDNS_USER}
    ]


def test_object_paths() -> None:
    objects = [
        *incluster.kubernetes_endpoints(address=NODE_ADDRESS, port=6443),
        *incluster.dns_objects(address=NODE_ADDRESS, node_name=REAL_NODE_NAME),
        *incluster.coredns_rbac(),
    ]
    assert [incluster.object_path(o) for o in objects] == [
        "/api/v1/namespaces/default/endpoints/kubernetes",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
        "/api/v1/namespaces/kube-system/services/kube-dns",
        "/api/v1/namespaces/kube-system/endpoints/kube-dns",
        "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:coredns",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:coredns",
    ]
    with pytest.raises(ValueError, match="no API path"):
        incluster.object_path({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})


# ---------------------------------------------------------------------------------- the DNS client


def test_query_wire_format() -> None:
    packet = dnsclient.build_query("kubernetes.default.svc.cluster.local", "A", ident=0x1234)
    assert packet[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert packet[12:] == (
        b"\x0akubernetes\x07default\x03svc\x07cluster\x05local\x00" + struct.pack("!HH", 1, 1)
    )
    assert dnsclient.encode_name(".") == b"\x00"
    with pytest.raises(ValueError, match="bad label"):
        dnsclient.encode_name("a..b")


def answer_packet(query: bytes, rcode: int, records: list[tuple[int, bytes]]) -> bytes:
    """A response to ``query``: its question echoed, each record named by a pointer to it."""
    ident = struct.unpack("!H", query[:2])[0]
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(records), 0, 0)
    body = query[12:]
    for kind, rdata in records:
        body += b"\xc0\x0c" + struct.pack("!HHIH", kind, 1, 5, len(rdata)) + rdata
    return header + body


def test_parse_a_ptr_and_srv_records() -> None:
    query = dnsclient.build_query("x.svc.cluster.local", "A", ident=7)
    # Name data of a PTR pointing back into the question (compression), and an SRV with its target.
    ptr = b"\x04host\xc0\x0e"  # "host." + the question name from "svc" on
    srv = struct.pack("!HHH", 0, 100, 53) + b"\x03dns\x00"
    packet = answer_packet(query, 0, [(1, bytes([10, 0, 0, 1])), (12, ptr), (33, srv), (99, b"\x01\x02")])
    answer = dnsclient.parse_response(packet, ident=7)
    assert answer.rcode == "NOERROR"
    assert answer.records == (
        ("A", "10.0.0.1"),
        ("PTR", "host.svc.cluster.local."),
        ("SRV", "0 100 53 dns."),
        ("TYPE99", "0102"),
    )
    assert answer.values("A") == ["10.0.0.1"]
    assert dnsclient.parse_response(answer_packet(query, 3, []), ident=7).rcode == "NXDOMAIN"
    with pytest.raises(dnsclient.DNSFormatError, match="not 8"):
        dnsclient.parse_response(packet, ident=8)
    with pytest.raises(dnsclient.DNSFormatError, match="not a response"):
        dnsclient.parse_response(query)
    with pytest.raises(dnsclient.DNSFormatError):
        dnsclient.parse_response(packet[:-3], ident=7)


@pytest.fixture
def dns_server() -> Iterator[int]:
    """A UDP and TCP DNS server on 127.0.0.1 (same port): A 10.0.0.1 for *.cluster.local., NXDOMAIN
    for the rest. UDP answers a stray packet with a wrong ID first, as a late answer would arrive."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(4)

    def reply(query: bytes) -> bytes:
        name = dnsclient.decode_name(query, 12)[0]
        if name.endswith(".cluster.local."):
            return answer_packet(query, 0, [(1, bytes([10, 0, 0, 1]))])
        return answer_packet(query, 3, [])

    def serve_udp() -> None:
        while True:
            try:
                query, peer = udp.recvfrom(512)
            except OSError:
                return
            stray = bytearray(reply(query))
            stray[0] ^= 0xFF
            udp.sendto(bytes(stray), peer)
            udp.sendto(reply(query), peer)

    def serve_tcp() -> None:
        while True:
            try:
                conn, _ = tcp.accept()
            except OSError:
                return
            with conn:
                (length,) = struct.unpack("!H", conn.recv(2))
                answer = reply(conn.recv(length))
                conn.sendall(struct.pack("!H", len(answer)) + answer)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for t in threads:
        t.start()
    yield port
    udp.close()
    tcp.shutdown(socket.SHUT_RDWR)
    tcp.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_resolve_against_a_server(dns_server: int, tcp: bool) -> None:
    answer = dnsclient.resolve("127.0.0.1", "kubernetes.default.svc.cluster.local", port=dns_server, tcp=tcp)
    assert (answer.rcode, answer.values("A")) == ("NOERROR", ["10.0.0.1"])
    answer = dnsclient.resolve("127.0.0.1", "pypi.org", port=dns_server, tcp=tcp)
    assert (answer.rcode, answer.records) == ("NXDOMAIN", ())


def test_main_prints_json(dns_server: int, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert dnsclient.main(["--server=127.0.0.1", f"--port={dns_server}", "a.cluster.local"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rcode"], out["answers"]) == ("NOERROR", ["10.0.0.1"])
    # Nobody listening: an error, not an answer.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert dnsclient.main(["--server=127.0.0.1", f"--port={closed}", "--tcp", "--timeout=1", "x"]) == 1
    assert "error" in json.loads(capsys.readouterr().out)
