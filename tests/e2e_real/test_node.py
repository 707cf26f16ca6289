"""The real node runs containers: a pod placed on it becomes Ready, answers through a Service
ClusterIP from inside the node's namespace, and reaches a host loopback port exposed to it."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import wait_for

from localkube import LocalCluster, RealNode

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
