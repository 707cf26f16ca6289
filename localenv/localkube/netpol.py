"""NetworkPolicy enforcement on the real node: kube-router's network policy controller alone
(``--run-firewall``; no routing, no service proxy), inside the node's network namespace, where it
writes iptables rules and ipsets for the node's pods. Opt-in: built by ``localenv/build.sh
network-policy`` (make network-policy-binaries) and started by the tests that need it.

Everything it writes lives in the node's namespace (iptables and ipsets are per network namespace),
so the host's own tables are never touched. ``stop()`` ends the process and removes its chains,
jumps and sets, so the node's other tests run as without it; the namespace's removal at the node's
teardown would take them too.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .apiserver import SERVICE_CIDR
from .bins import BUILD_SCRIPT
from .common import ClusterError
from .node import RealNode
from .nodenet import API_PORT_IN_NODE

COMPONENT = "kube-router"
BINARY = "kube-router"
#: kube-router execs these (Debian packages: iptables, ipset).
HOST_TOOLS = ("iptables", "iptables-save", "iptables-restore", "ipset")
#: Chains kube-router's policy controller creates in the filter table.
CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
#: Its ipsets: KUBE-SRC-..., KUBE-DST-..., KUBE-NWPLCY-... (IPv4 only here).
IPSET_PREFIX = "KUBE-"


def resolve_binary() -> Path:
    """kube-router from the build cache (``localenv/build.sh network-policy``; built on first use)."""
    result = subprocess.run(
        [str(BUILD_SCRIPT), "network-policy"], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise ClusterError(f"{BUILD_SCRIPT} network-policy failed (exit code {result.returncode})")
    binary = Path(lines[-1]) / BINARY
    if not binary.is_file():
        raise ClusterError(f"{binary} was not built")
    return binary


def missing_tools() -> list[str]:
    return [tool for tool in HOST_TOOLS if shutil.which(tool) is None]


class NetworkPolicyController:
    """kube-router's policy controller for one real node, reading the API server with ``kubeconfig``
    (the node's bridge: https://127.0.0.1:6443 inside the namespace)."""

    def __init__(self, node: RealNode, *, binary: Path, kubeconfig: Path) -> None:
        self.node = node
        self.binary = binary
        self.kubeconfig = kubeconfig

    def start(self, *, timeout: float = 60.0) -> None:
        self.node.start_process(
            COMPONENT,
            [
                str(self.binary),
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--enable-ipv4=true",
                "--enable-ipv6=false",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={self.node.name}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--health-port=0",  # readiness is read off its chains (_healthy)
                "--metrics-port=0",
                "--iptables-sync-period=30s",
                "--v=1",
            ],
            exe=BINARY,
        )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if not self.node.process_alive(COMPONENT):
                raise ClusterError(f"kube-router exited:\n{self.node.process_log(COMPONENT)}")
            if time.monotonic() > deadline:
                log = self.node.process_log(COMPONENT)
                raise ClusterError(f"kube-router wrote no policy chains within {timeout:.0f} s:\n{log}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        """Its top-level chains are in place (the first thing its controller does once synced)."""
        rules = self.node.run("iptables", "-S", "FORWARD", check=False, timeout=20).stdout
        return "KUBE-ROUTER-FORWARD" in rules

    def log(self, lines: int = 40) -> str:
        return self.node.process_log(COMPONENT, lines)

    def stop(self) -> None:
        """End the controller, then remove what it wrote: the jumps from INPUT, FORWARD and OUTPUT, its
        chains, its ipsets."""
        if COMPONENT in self.node.components:
            self.node.stop_process(COMPONENT)
        saved = self.node.run("iptables-save", "-t", "filter", timeout=30).stdout
        ours = sorted(
            {
                line[1:].split()[0]
                for line in saved.splitlines()
                if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)
            }
        )
        for line in saved.splitlines():
            # "-A FORWARD -m comment --comment "kube-router netpol - ..." -j KUBE-ROUTER-FORWARD":
            # deleted by the same rule spec (shlex keeps the quoted comment one argument).
            args = shlex.split(line)
            jumps_to_ours = "-j" in args and args[args.index("-j") + 1].startswith(CHAIN_PREFIXES)
            if (
                len(args) > 3
                and args[0] == "-A"
                and args[1] in ("INPUT", "FORWARD", "OUTPUT")
                and jumps_to_ours
            ):
                self.node.run("iptables", "-t", "filter", "-D", *args[1:], timeout=20)
        for chain in ours:
            self.node.run("iptables", "-t", "filter", "-F", chain, timeout=20)
        for chain in ours:
            self.node.run("iptables", "-t", "filter", "-X", chain, timeout=20)
        sets = self.node.run("ipset", "list", "-n", timeout=20).stdout.split()
        for name in sets:
            if name.startswith(IPSET_PREFIX):
                self.node.run("ipset", "destroy", name, timeout=20)
        left = [c for c in self.chains() if c.startswith(CHAIN_PREFIXES)]
        if left:
            raise ClusterError(f"kube-router's chains are still there after cleanup: {left}")

    def chains(self) -> list[str]:
        saved = self.node.run("iptables-save", "-t", "filter", timeout=30).stdout
        return [line.split()[0][1:] for line in saved.splitlines() if line.startswith(":")]


def node_kubeconfig(admin_kubeconfig: Path, server: str, dest: Path) -> Path:
    """The admin kubeconfig with its server replaced by the API server's address inside the node."""
    dest.write_text(admin_kubeconfig.read_text().replace(server, f"https://127.0.0.1:{API_PORT_IN_NODE}"))
    dest.chmod(0o600)
    return dest
