"""The real node runs containers: a pod placed on it becomes Ready, answers through a Service
ClusterIP from inside the node's namespace, and reaches a host loopback port exposed to it. Its pods
are in-cluster clients as in a real cluster: cluster DNS (kube-dns) resolves the kubernetes Service
and any Service's ``<name>.<namespace>.svc``, fails outside names at once, and the kubernetes
Service leads to the API server, which takes the pod's ServiceAccount token over TLS verified by
the mounted ca.crt."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import wait_for

from localkube import LocalCluster, RealNode
from localkube.incluster import CLUSTER_DOMAIN, DNS_SERVICE_IP, KUBERNETES_SERVICE_IP

BUSYBOX = "/bin/busybox"


def _pod(
    name: str, *, image: str, command: list[str], placement: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **placement,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": [
                {"name": name, "image": image, "imagePullPolicy": "Never", "command": command, **spec}
            ],
            "restartPolicy": "Never",
        },
    }


def _apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def _get(cluster: LocalCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    return out


def test_pod_on_real_node_serves_through_a_cluster_ip(
    cluster: LocalCluster, node: RealNode, namespace: str, placement: dict[str, Any]
) -> None:
    page = f"served-by-{namespace}"
    script = f"mkdir -p /www && echo {page} > /www/index.html && exec {BUSYBOX} httpd -f -p 8080 -h /www"
    web = _pod(
        "web",
        image=node.images["pause"],
        command=[BUSYBOX, "sh", "-c", script],
        placement=placement,
        ports=[{"containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    started = time.monotonic()
    _apply(cluster, namespace, web, service)
    cluster.kubectl("wait", "-n", namespace, "pod/web", "--for=condition=Ready", "--timeout=90s", timeout=120)
    ready_after = time.monotonic() - started
    pod = _get(cluster, namespace, "pod", "web")
    assert pod["spec"]["nodeName"] == node.name
    cluster_ip = _get(cluster, namespace, "service", "web")["spec"]["clusterIP"]

    def fetch() -> str | None:
        code = f"import urllib.request;print(urllib.request.urlopen('http://{cluster_ip}/index.html',timeout=3).read().decode())"
        result = node.run("python3", "-c", code, check=False, timeout=20)
        return result.stdout.strip() if result.returncode == 0 else None

    # kube-proxy programs the Service a moment after the endpoints appear.
    assert wait_for(fetch, timeout=30, what=f"{page} through {cluster_ip}") == page
    # The API server reaches the kubelet (through the egress proxy in the node's namespace).
    exec_out = cluster.kubectl("exec", "-n", namespace, "web", "--", BUSYBOX, "cat", "/www/index.html")
    assert exec_out.stdout.strip() == page
    print(f"pod Ready {ready_after:.1f} s after apply; served through ClusterIP {cluster_ip}")


def test_pods_without_the_toleration_stay_on_the_kwok_node(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "deployment", "plain", "-n", namespace, "--image=registry.invalid/never:pulled")
    cluster.kubectl(
        "wait", "-n", namespace, "deployment/plain", "--for=condition=Available", "--timeout=60s", timeout=90
    )
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [cluster.node_name]


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host's loopback only, as the tests' MLflow server is."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"from-the-host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_pod_reaches_an_exposed_host_port(
    cluster: LocalCluster, node: RealNode, namespace: str, placement: dict[str, Any], host_server: int
) -> None:
    address, port = node.expose_host_port(host_server)
    client = _pod(
        "client",
        image=node.images["pause"],
        command=[
            BUSYBOX,
            "sh",
            "-c",
            f"{BUSYBOX} wget -qO- http://{address}:{port}/",
        ],
        placement=placement,
    )
    _apply(cluster, namespace, client)

    def phase() -> str | None:
        value = _get(cluster, namespace, "pod", "client").get("status", {}).get("phase")
        return value if value in ("Succeeded", "Failed") else None

    assert wait_for(phase, timeout=90, what="the client pod to finish") == "Succeeded"
    # kubectl logs: the API server reaches the kubelet through the egress proxy.
    assert cluster.kubectl("logs", "-n", namespace, "client").stdout.strip() == "from-the-host"


# ---------------------------------------------------------------------------------- in-cluster clients

#: Run by python3 in a pod of the serving image: resolves each name of argv with the pod's own
#: resolver (its /etc/resolv.conf: the search list, ndots), then calls the API server as in-cluster
#: clients do (client-go's rest.InClusterConfig): token and CA from the ServiceAccount mount, the
#: kubernetes Service by name and by $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT. One JSON line.
IN_CLUSTER_PROBE = """
import json, os, socket, ssl, sys, time, urllib.error, urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
report = {"resolv_conf": open("/etc/resolv.conf").read(), "names": {}}
for name in sys.argv[1:]:
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        result = {"addresses": sorted({info[4][0] for info in infos})}
    except socket.gaierror as e:
        result = {"error": e.errno, "message": str(e)}
    result["seconds"] = round(time.monotonic() - started, 3)
    report["names"][name] = result

token = open(SA + "/token").read().strip()
context = ssl.create_default_context(cafile=SA + "/ca.crt")
context.verify_flags |= ssl.VERIFY_X509_STRICT


def call(url, body=None):
    headers = {"Authorization": "Bearer " + token, "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return {"status": response.status, "body": json.loads(response.read())}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace")[:1000]}
    except Exception as e:
        return {"error": type(e).__name__ + ": " + str(e)}


env = os.environ["KUBERNETES_SERVICE_HOST"] + ":" + os.environ["KUBERNETES_SERVICE_PORT"]
report["api_by_name"] = call("https://kubernetes.default.svc/api")
report["api_by_env"] = call("https://" + env + "/api")
report["api_env"] = env
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
report["whoami"] = call(
    "https://kubernetes.default.svc.cluster.local/apis/authentication.k8s.io/v1/selfsubjectreviews", review
)
print(json.dumps(report))
"""

#: Outside names: one a resolver elsewhere would answer, one nobody does. No forwarding: NXDOMAIN.
OUTSIDE_NAMES = ("pypi.org", "outside.aliasroll.invalid")


@pytest.fixture(scope="module")
def in_cluster_report(
    cluster: LocalCluster, serving_image: str, placement: dict[str, Any]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(namespace, the Service "web"'s ClusterIP, what the probe pod printed)."""
    namespace = "in-cluster-clients"
    cluster.kubectl("create", "namespace", namespace)
    try:
        # Pods are admitted only once the namespace's ServiceAccount exists.
        wait_for(
            lambda: (
                cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode
                == 0
            ),
            timeout=60,
            what=f"the default ServiceAccount of {namespace}",
        )
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        names = [
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            "kubernetes.default",
            f"web.{namespace}.svc",
            "web",
            *OUTSIDE_NAMES,
        ]
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {
                **placement,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "probe",
                        "image": serving_image,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", IN_CLUSTER_PROBE, *names],
                    }
                ],
            },
        }
        _apply(cluster, namespace, service, probe)
        cluster_ip = _get(cluster, namespace, "service", "web")["spec"]["clusterIP"]

        def phase() -> str | None:
            value = _get(cluster, namespace, "pod", "probe").get("status", {}).get("phase")
            return value if value in ("Succeeded", "Failed") else None

        finished = wait_for(phase, timeout=120, what="the probe pod to finish")
        logs = cluster.kubectl("logs", "-n", namespace, "probe").stdout
        assert finished == "Succeeded", f"the probe pod {finished}:\n{logs}"
        report: dict[str, Any] = json.loads(logs.strip().splitlines()[-1])
        print(json.dumps(report, indent=1))
        yield namespace, cluster_ip, report
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_pod_resolves_the_kubernetes_service(in_cluster_report: tuple[str, str, dict[str, Any]]) -> None:
    namespace, _, report = in_cluster_report
    for name in ("kubernetes.default.svc", f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "kubernetes.default"):
        assert report["names"][name].get("addresses") == [KUBERNETES_SERVICE_IP], (
            name,
            report["names"][name],
        )
    # kubelet's clusterDNS and clusterDomain: the kube-dns ClusterIP and the pod's search list.
    resolv = report["resolv_conf"].split("\n")
    assert f"nameserver {DNS_SERVICE_IP}" in resolv
    assert any(
        line.split()[:4]
        == ["search", f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
        for line in resolv
    ), report["resolv_conf"]


def test_pod_resolves_a_service_by_name(in_cluster_report: tuple[str, str, dict[str, Any]]) -> None:
    namespace, cluster_ip, report = in_cluster_report
    assert report["names"][f"web.{namespace}.svc"].get("addresses") == [cluster_ip]
    assert report["names"]["web"].get("addresses") == [cluster_ip]  # the search list's first entry


def test_outside_names_fail_at_once(in_cluster_report: tuple[str, str, dict[str, Any]]) -> None:
    _, _, report = in_cluster_report
    for name in OUTSIDE_NAMES:
        result = report["names"][name]
        # EAI_NONAME: every name of the search list answered NXDOMAIN (a timeout or SERVFAIL would be
        # EAI_AGAIN), within well under the resolver's 5 s timeout.
        assert result.get("error") == socket.EAI_NONAME, (name, result)
        assert result["seconds"] < 1.0, (name, result)


def test_pod_reaches_the_api_server_through_the_kubernetes_service(
    in_cluster_report: tuple[str, str, dict[str, Any]],
) -> None:
    namespace, _, report = in_cluster_report
    assert report["api_env"] == f"{KUBERNETES_SERVICE_IP}:443"
    # TLS verified against the mounted ca.crt (by name and by the ClusterIP), the token accepted:
    # discovery is open to every authenticated user (a TLS or connection error has no status).
    for key in ("api_by_name", "api_by_env"):
        assert report[key].get("status") == 200, (key, report[key])
        assert "v1" in report[key]["body"]["versions"]
    whoami = report["whoami"]
    assert whoami.get("status") == 201, whoami
    assert whoami["body"]["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"


def test_cluster_dns_from_the_nodes_namespace(cluster: LocalCluster, node: RealNode) -> None:
    """The kube-dns ClusterIP over UDP and TCP, a reverse name, and the objects behind both Services."""
    name = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
    for tcp in (False, True):
        answer = node.resolve(name, tcp=tcp)
        assert (answer.get("rcode"), answer.get("answers")) == ("NOERROR", [KUBERNETES_SERVICE_IP]), answer
    reverse = ".".join(reversed(KUBERNETES_SERVICE_IP.split("."))) + ".in-addr.arpa"
    assert node.resolve(reverse, qtype="PTR")["answers"] == [f"{name}."]
    outside = node.resolve("pypi.org")
    assert outside.get("rcode") == "NXDOMAIN", outside
    assert outside["seconds"] < 1.0, outside

    def labelled(namespace: str, kind: str, selector: str) -> list[dict[str, Any]]:
        out = cluster.kubectl("get", kind, "-n", namespace, "-l", selector, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    slices = labelled("default", "endpointslices", "kubernetes.io/service-name=kubernetes")
    assert [(p["name"], p["port"]) for s in slices for p in s["ports"]] == [("https", 6443)]
    assert [a for s in slices for e in s["endpoints"] for a in e["addresses"]] == [node.address]
    assert labelled("default", "endpoints", "endpointslice.kubernetes.io/skip-mirror=true")
    dns = _get(cluster, "kube-system", "service", "kube-dns")
    assert dns["spec"]["clusterIP"] == DNS_SERVICE_IP
    assert "selector" not in dns["spec"]
    dns_slices = labelled("kube-system", "endpointslices", "kubernetes.io/service-name=kube-dns")
    assert sorted((p["protocol"], p["port"]) for s in dns_slices for p in s["ports"]) == [
        ("TCP", 53),
        ("UDP", 53),
    ]
