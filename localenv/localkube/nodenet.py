"""The real node's network namespace and the ways into and out of it.

- The namespace ``aliasroll-<id>``: ``lo`` carries the node's address (kubelet rejects loopback node
  IPs), the CNI bridge ``cni0`` is the pods' gateway, and the Service range is routed to ``cni0``, so
  locally generated traffic to a ClusterIP meets kube-proxy's DNAT. kube-proxy's iptables rules live
  in the namespace only: the host's own tables and routes are never touched.
- The API server listens on the host's loopback, which the namespace cannot see: a pair of socat
  processes bridges it through a Unix socket to ``127.0.0.1:6443`` inside the namespace (the node's
  kubeconfigs), and a third socat listens on ``<node address>:6443`` for pods (the ``kubernetes``
  Service's endpoints). ``RealNode.expose_host_port`` bridges any host loopback port the same way.
- The API server's ``cluster`` egress (kubelets for logs and exec, Service and pod proxying) goes
  through a CONNECT proxy inside the namespace (egress.py), named by the EgressSelectorConfiguration.

Processes are entered with ``nsenter --net`` (``ip netns exec`` remounts /sys, which hides
/sys/fs/cgroup from kubelet).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .apiserver import SERVICE_CIDR
from .common import ClusterError, run_checked, tail
from .nodestate import NodeRecord
from .processes import Processes

#: The node's address on the namespace's ``lo``, and the pods' range on ``cni0`` (the first address is
#: the bridge, the pods' gateway). Private to the namespace, so every real node can use the same ones.
NODE_ADDRESS = "10.246.0.1"
NODE_POD_CIDR = "10.245.0.0/24"
NODE_GATEWAY = "10.245.0.1"
#: Where the API server appears inside the namespace (its serving certificate names 127.0.0.1).
API_PORT_IN_NODE = 6443
NETNS_DIR = Path("/var/run/netns")


def nsenter_argv(netns: str, *argv: str) -> list[str]:
    """``argv`` run inside the namespace ``netns`` (network only: the host's files, PATH)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", *argv]


def make_netns(ns: str, *, address: str) -> None:
    """The namespace with the node's address on ``lo``, the bridge ``cni0`` and the Service route."""
    run_checked(["ip", "netns", "add", ns], what="creating the node's network namespace")
    for cmd in (
        ["link", "set", "lo", "up"],
        ["addr", "add", f"{address}/32", "dev", "lo"],
        # The bridge exists before any pod, so the Service route below has a device; the CNI
        # bridge plugin adopts it (same name, same gateway address).
        ["link", "add", "cni0", "type", "bridge"],
        ["addr", "add", f"{NODE_GATEWAY}/{NODE_POD_CIDR.split('/')[1]}", "dev", "cni0"],
        ["link", "set", "cni0", "up"],
        ["route", "add", SERVICE_CIDR, "dev", "cni0", "src", NODE_GATEWAY],
    ):
        run_checked(["ip", "-n", ns, *cmd], what=f"setting up namespace {ns}")


def delete_netns(ns: str) -> None:
    if (NETNS_DIR / ns).exists():
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def egress_selector_config(socket_path: Path) -> str:
    """The API server's EgressSelectorConfiguration: traffic to the cluster (kubelets, pods,
    Services) through the CONNECT proxy listening on ``socket_path`` (see egress.py)."""
    return (
        "apiVersion: apiserver.k8s.io/v1beta1\n"
        "kind: EgressSelectorConfiguration\n"
        "egressSelections:\n"
        "- name: cluster\n"
        "  connection:\n"
        "    proxyProtocol: HTTPConnect\n"
        "    transport:\n"
        "      uds:\n"
        f"        udsName: {socket_path}\n"
    )


def spawn_in_node(
    procs: Processes,
    record: NodeRecord,
    name: str,
    argv: Sequence[str],
    *,
    exe: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """Start ``argv`` inside the node's namespace as component ``name``, recorded first (so ``stop()``
    ends it even when the start fails)."""
    record.add_component(name)
    procs.spawn(name, nsenter_argv(record.fact("netns"), *argv), exe=exe, env=env)


class Bridges:
    """The processes that carry traffic across the namespace's boundary: socat bridges from host
    loopback ports to listeners inside the namespace, and the egress proxy the API server reaches
    the cluster through. Their sockets are in the node's run dir; each is one of its components."""

    def __init__(self, procs: Processes, record: NodeRecord) -> None:
        self._procs = procs
        self._record = record

    def start_egress_proxy(self, *, node_name: str, address: str) -> None:
        """egress.py inside the namespace, listening on ``egress.sock`` (``egress_selector_config``)."""
        sock = self._record.run_dir / "egress.sock"
        spawn_in_node(
            self._procs,
            self._record,
            "egress-proxy",
            [
                sys.executable, str(Path(__file__).with_name("egress.py")), f"--socket={sock}",
                f"--host={node_name}={address}",
            ],
            exe=Path(sys.executable).name,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while not sock.exists():
            if not self._procs.alive("egress-proxy") or time.monotonic() > deadline:
                log = tail(self._procs.log_file("egress-proxy"), 20)
                raise ClusterError(f"the egress proxy did not listen on {sock}:\n{log}")
            time.sleep(0.02)

    def bridge(self, name: str, *, host_port: int, listen: tuple[str, int]) -> None:
        """Host 127.0.0.1:host_port <- Unix socket <- listen (inside the namespace)."""
        sock = self._record.run_dir / f"{name}.sock"
        sock.unlink(missing_ok=True)
        self._record.add_component(f"{name}-host")
        self._procs.spawn(
            f"{name}-host", ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{host_port}"]
        )
        deadline = time.monotonic() + 10.0
        while not sock.exists():
            if not self._procs.alive(f"{name}-host") or time.monotonic() > deadline:
                log = tail(self._procs.log_file(f"{name}-host"), 20)
                raise ClusterError(f"socat for {name} did not listen on {sock}:\n{log}")
            time.sleep(0.02)
        self.listen_in_node(f"{name}-node", sock, listen=listen)

    def listen_in_node(self, component: str, sock: Path, *, listen: tuple[str, int]) -> None:
        """A socat inside the namespace: TCP ``listen`` -> the Unix socket ``sock`` of a bridge."""
        address, port = listen
        spawn_in_node(
            self._procs,
            self._record,
            component,
            ["socat", f"TCP-LISTEN:{port},bind={address},fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
            exe="socat",
        )

    def wait_listening(
        self, component: str, port: int, *, timeout: float, address: str | None = None
    ) -> None:
        """Until ``component`` is up and the namespace has a TCP listener on ``port`` (on ``address``
        when given); /proc/PID/net/tcp shows the sockets of the process's namespace."""
        deadline = time.monotonic() + timeout
        hex_port = f":{port:04X}"
        if address is not None:
            # /proc/net/tcp prints the address as a native-endian 32-bit number.
            hex_port = "{:08X}".format(*struct.unpack("=I", socket.inet_aton(address))) + hex_port
        while True:
            pid = self._procs.saved_pid(component)
            if pid is None or not self._procs.alive(component):
                raise ClusterError(f"{component} exited:\n{tail(self._procs.log_file(component), 20)}")
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(hex_port) and fields[3] == "0A":  # 0A: LISTEN
                        return
            if time.monotonic() > deadline:
                raise ClusterError(f"{component} does not listen on port {port} after {timeout:.0f} s")
            time.sleep(0.05)
