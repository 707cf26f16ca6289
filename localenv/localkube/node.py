"""The real node: containerd, kubelet and kube-proxy in a network namespace of their own, beside the
kwok node, so pods that ask for it run real containers (see /work/shared/ref/real-node.md for the
pitfalls each setting below answers).

Layout, all recorded in ``state.json`` (key ``real_node``) before it is created, so ``stop()`` also
cleans up after a start that failed half-way:

- network namespace ``aliasroll-<id>``: ``lo`` carries the node's address (kubelet rejects loopback
  node IPs), the CNI bridge ``cni0`` is the pods' gateway, the Service range is routed to ``cni0`` (so
  locally generated traffic to a ClusterIP meets kube-proxy's DNAT), and kube-proxy's iptables rules
  live there only. The host's own tables and routes are never touched.
- ``<state dir>/node/``: containerd's root (images, snapshots), kubelet's root dir, pod logs, CNI
  config and IPAM data, configs and kubeconfigs. ``/run/aliasroll-<id>/``: sockets and containerd's
  state (short paths: Unix socket paths are limited to 107 bytes).
- cgroup ``/aliasroll-<id>`` in every mounted hierarchy: kubelet's cgroupRoot, so every container
  of this node lives below it, and teardown can find and stop them all.
- The API server listens on the host's loopback, which the namespace cannot see: a pair of socat
  processes bridges it through a Unix socket to ``127.0.0.1:6443`` inside the namespace (the node's
  kubeconfigs), and a third socat listens on ``<node address>:6443`` for pods: the ``kubernetes``
  Service's endpoints (written by the node, incluster.py), so in-cluster clients reach
  https://kubernetes.default.svc with their ServiceAccount token and the mounted ca.crt.
  ``expose_host_port`` does the same for any host loopback port (e.g. an MLflow server), listening on
  the node's address so pods reach it. The API server's ``cluster`` egress (kubelets for logs and
  exec, Service and pod proxying) goes through a CONNECT proxy inside the namespace (egress.py).
- Cluster DNS: CoreDNS (localenv/go/coredns) inside the namespace on ``<node address>:53``, behind the
  ``kube-system/kube-dns`` Service (ClusterIP 10.0.0.10, kubelet's ``clusterDNS``, domain
  cluster.local); it answers ``cluster.local`` and the reverse zones of the Service and pod ranges
  from the API server, NXDOMAIN for every other name (nothing is forwarded). Pods that use no DNS
  are unaffected. Only inside the namespace: host processes reach neither 10.0.0.10 nor CoreDNS.
- kubelet rewrites a few machine-wide kernel settings at start (sysctls.KUBELET_SYSCTLS): recorded
  before it starts, restored on teardown; with other real nodes of the machine running, by the last
  of them to stop (sysctls.py).

containerd, kubelet, kube-proxy and CoreDNS are entered with ``nsenter --net`` (``ip netns exec``
remounts /sys, which hides /sys/fs/cgroup from kubelet).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import incluster, sysctls
from . import pki as pki_mod
from .apiserver import SERVICE_CIDR, AdminClient
from .bins import CNI_BIN_SUBDIR, missing_node_binaries
from .common import ClusterError, run_checked, tail
from .kubeconfig import write_cert_kubeconfig
from .processes import OWNER_ENV, Processes, owned_by
from .state import State

REAL_NODE_NAME = "aliasroll-real-node"
#: Pods that should run on the real node select it by this label and tolerate this taint; every
#: other pod stays on the kwok node.
REAL_NODE_LABEL = ("aliasroll.io/node", "real")
REAL_NODE_TAINT = ("aliasroll.io/real-node", "true", "NoSchedule")
#: The node's address on the namespace's ``lo``, and the pods' range on ``cni0`` (the first address is
#: the bridge, the pods' gateway). Private to the namespace, so every real node can use the same ones.
NODE_ADDRESS = "10.246.0.1"
NODE_POD_CIDR = "10.245.0.0/24"
NODE_GATEWAY = "10.245.0.1"
#: Where the API server appears inside the namespace (its serving certificate names 127.0.0.1).
API_PORT_IN_NODE = 6443
KUBELET_PORT = 10250
KUBE_PROXY_HEALTHZ_PORT = 10256
#: The stdlib DNS client the readiness check and ``resolve()`` run inside the namespace.
DNS_CLIENT = Path(__file__).with_name("dnsclient.py")
#: Images loaded into the node's containerd at start; each test may load more with ``load_images``.
DEFAULT_IMAGES = ("pause",)
NODE_BINARIES_ON_PATH = ("containerd-shim-runc-v2",)
#: CNI's result cache: libcni writes here whatever the config says; teardown removes this node's files.
CNI_CACHE_DIR = Path("/var/lib/cni/results")
#: kubelet links every container's log here (a path it does not let us move).
CONTAINER_LOG_LINKS = Path("/var/log/containers")
NETNS_DIR = Path("/var/run/netns")
#: Machine-wide kernel settings kubelet rewrites at start (with protectKernelDefaults it would refuse
#: to start instead): recorded before, restored on teardown.
CGROUP_FS = Path("/sys/fs/cgroup")


class ImageArchiveLike(Protocol):
    """What ``localkube.images.ensure_images`` returns for each image."""

    @property
    def ref(self) -> str: ...

    @property
    def path(self) -> Path: ...


def _run_dir(node_id: str) -> Path:
    return Path(f"/run/aliasroll-{node_id}")


def pod_placement() -> dict[str, Any]:
    """The pod-spec fields that put a pod on the real node: merge into ``spec`` of a Pod/template."""
    key, value = REAL_NODE_LABEL
    taint_key, taint_value, effect = REAL_NODE_TAINT
    return {
        "nodeSelector": {key: value},
        "tolerations": [{"key": taint_key, "operator": "Equal", "value": taint_value, "effect": effect}],
    }


def _ensure_images(names: Sequence[str]) -> Mapping[str, ImageArchiveLike]:
    # Imported on use: the images module builds with buildah and is only needed for a real node.
    from . import images  # type: ignore[attr-defined,unused-ignore]

    result: Mapping[str, ImageArchiveLike] = images.ensure_images(names=tuple(names))
    return result


def _mounts_below(directories: Sequence[Path]) -> list[Path]:
    """Mount points at or below any of ``directories``, deepest first (from /proc/self/mountinfo)."""
    found: list[Path] = []
    roots = [str(d.resolve()) for d in directories]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Octal escapes (\040 for a space) in mount points.
        point = fields[4].encode().decode("unicode_escape")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            points.append(Path(left.split()[4]))
    return points


class RealNode:
    """The real node of one local cluster (see the module's doc). Made by LocalCluster; tests use
    ``name``, ``address``, ``netns``, ``run()``/``nsenter_argv()``, ``expose_host_port()``,
    ``load_images()`` and ``resolve()`` (the cluster DNS, from inside the namespace)."""

    def __init__(self, state_dir: Path, *, processes: Processes, state: State) -> None:
        self.state_dir = state_dir
        self._procs = processes
        self._state = state

    # ------------------------------------------------------------------------------------ recorded facts

    def _info(self) -> dict[str, Any]:
        info = self._state.get("real_node")
        return info if isinstance(info, dict) else {}

    def _record(self, **values: Any) -> None:
        self._state.update(real_node={**self._info(), **values})

    def _fact(self, key: str) -> str:
        value = self._info().get(key)
        if not isinstance(value, str):
            raise ClusterError(f"the real node's {key} is not recorded in {self._state.path}")
        return value

    @property
    def name(self) -> str:
        return self._info().get("name", REAL_NODE_NAME)  # type: ignore[no-any-return]

    @property
    def address(self) -> str:
        """The node's IP inside its namespace (its InternalIP; where exposed host ports listen)."""
        return self._info().get("address", NODE_ADDRESS)  # type: ignore[no-any-return]

    @property
    def images(self) -> dict[str, str]:
        """Images loaded into the node's containerd: name (e.g. "pause") -> ref for pod specs."""
        recorded = self._info().get("images")
        return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}

    @property
    def netns(self) -> str:
        """The network namespace's name (``ip netns`` lists it)."""
        return self._fact("netns")

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def run_dir(self) -> Path:
        return Path(self._fact("run_dir"))

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def components(self) -> list[str]:
        """This node's processes, in start order (names of their PID and log files)."""
        recorded = self._info().get("components")
        return [str(c) for c in recorded] if isinstance(recorded, list) else []

    def _add_component(self, name: str) -> None:
        if name not in self.components:
            self._record(components=[*self.components, name])

    # ------------------------------------------------------------------------------------ for tests

    def nsenter_argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the node's network namespace (network only: the host's files, PATH)."""
        return ["nsenter", f"--net={self.netns_path}", *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's network namespace (e.g. a client of a ClusterIP)."""
        result = subprocess.run(
            self.nsenter_argv(*argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            output = f"{result.stderr}{result.stdout}"
            raise ClusterError(f"{' '.join(argv)} in {self.netns} exited {result.returncode}:\n{output}")
        return result

    def resolve(
        self,
        name: str,
        *,
        qtype: str = "A",
        tcp: bool = False,
        server: str = incluster.DNS_SERVICE_IP,
        timeout: float = 2.0,
    ) -> dict[str, Any]:
        """Ask the cluster DNS (the kube-dns ClusterIP unless ``server``) from inside the node's
        namespace, one query, no search list: dnsclient.py's JSON (``rcode``, ``answers``, ...)."""
        argv = [
            sys.executable,
            str(DNS_CLIENT),
            f"--server={server}",
            f"--type={qtype}",
            f"--timeout={timeout}",
        ]
        result = self.run(*argv, *(["--tcp"] if tcp else []), name, check=False, timeout=timeout + 20)
        try:
            answer = json.loads(result.stdout)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ClusterError(f"dnsclient.py printed no answer:\n{result.stderr}{result.stdout}")
        return answer

    def ctr(self, *args: str, timeout: float = 300.0) -> str:
        """``ctr`` against the node's containerd, namespace k8s.io (the CRI's)."""
        bin_dir = Path(self._fact("bin_dir"))
        return run_checked(
            [str(bin_dir / "ctr"), f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            what="ctr",
            timeout=timeout,
        )

    def load_images(self, names: Sequence[str]) -> dict[str, str]:
        """Build (or reuse) the named images and import them into the node; returns name -> ref."""
        archives = _ensure_images(names)
        for archive in archives.values():
            self.ctr("images", "import", str(archive.path))
        loaded = {name: archive.ref for name, archive in archives.items()}
        self._record(images={**self.images, **loaded})
        return loaded

    def expose_host_port(self, port: int, *, timeout: float = 20.0) -> tuple[str, int]:
        """Make ``127.0.0.1:port`` of the host reachable from pods at the returned (address, port):
        the node's address inside the namespace, through a Unix socket and two socat processes."""
        name = f"port-{port}"
        if f"{name}-node" not in self.components:
            self._bridge(name, host_port=port, listen=(self.address, port))
            self._wait_listening(f"{name}-node", port, timeout=timeout)
        return self.address, port

    def start_process(self, name: str, argv: Sequence[str], *, exe: str) -> None:
        """Start a process of a test's own inside the node's namespace (e.g. a NetworkPolicy
        controller), recorded like the node's own components: ``stop()`` ends it with them."""
        self._add_component(name)
        self._procs.spawn(name, self.nsenter_argv(*argv), exe=exe)

    def stop_process(self, name: str, *, grace: float = 10.0) -> None:
        """End a process ``start_process`` started (SIGTERM, then SIGKILL after ``grace`` s)."""
        left = self._procs.terminate([name], grace=grace)
        if left:
            raise ClusterError(f"could not stop {name} (pid {left[name]})")
        self._record(components=[c for c in self.components if c != name])

    def process_alive(self, name: str) -> bool:
        return self._procs.alive(name)

    def process_log(self, name: str, lines: int = 40) -> str:
        return tail(self._procs.log_file(name), lines)

    # ------------------------------------------------------------------------------------ start

    @staticmethod
    def check_prerequisites(bin_dir: Path) -> None:
        """Raise ClusterError naming what a real node lacks (root, binaries, Debian tools)."""
        if os.geteuid() != 0:
            raise ClusterError("the real node needs root (network namespaces, mounts, cgroups)")
        missing = missing_node_binaries(bin_dir)
        if missing:
            raise ClusterError(
                f"the real node needs {', '.join(missing)} (binaries: make node-binaries; "
                "Debian packages: make node-packages)"
            )

    def plan(self, bin_dir: Path) -> None:
        """Choose and record every name the node will use (before the control plane starts: the API
        server's egress configuration names the node's proxy socket)."""
        node_id = secrets.token_hex(4)
        self._record(
            id=node_id,
            name=REAL_NODE_NAME,
            address=NODE_ADDRESS,
            netns=f"aliasroll-{node_id}",
            run_dir=str(_run_dir(node_id)),
            cgroup_root=f"/aliasroll-{node_id}",
            cni_network=f"aliasroll-{node_id}",
            bin_dir=str(bin_dir),
            components=[],
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def egress_config(self) -> Path:
        """The API server's EgressSelectorConfiguration: traffic to the cluster (kubelets, pods,
        Services) through the CONNECT proxy inside the namespace (see egress.py)."""
        path = self.dir / "egress-selector.yaml"
        path.write_text(
            "apiVersion: apiserver.k8s.io/v1beta1\n"
            "kind: EgressSelectorConfiguration\n"
            "egressSelections:\n"
            "- name: cluster\n"
            "  connection:\n"
            "    proxyProtocol: HTTPConnect\n"
            "    transport:\n"
            "      uds:\n"
            f"        udsName: {self.run_dir / 'egress.sock'}\n"
        )
        return path

    def _start_egress_proxy(self) -> None:
        sock = self.run_dir / "egress.sock"
        self._add_component("egress-proxy")
        self._procs.spawn(
            "egress-proxy",
            self.nsenter_argv(
                sys.executable, str(Path(__file__).with_name("egress.py")), f"--socket={sock}",
                f"--host={self.name}={self.address}",
            ),
            exe=Path(sys.executable).name,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while not sock.exists():
            if not self._procs.alive("egress-proxy") or time.monotonic() > deadline:
                log = tail(self._procs.log_file("egress-proxy"), 20)
                raise ClusterError(f"the egress proxy did not listen on {sock}:\n{log}")
            time.sleep(0.02)

    @staticmethod
    def prepare_images(names: Sequence[str]) -> dict[str, ImageArchiveLike]:
        """Build (or find cached) the node's images; always includes the pause image (the sandbox)."""
        wanted = ["pause", *(n for n in names if n != "pause")]
        return dict(_ensure_images(wanted))

    def start(
        self,
        *,
        bin_dir: Path,
        apiserver_port: int,
        pki: Path,
        api: AdminClient,
        wait: Callable[[str, Callable[[], bool], float, Sequence[str]], None],
        deadline: float,
        images: Mapping[str, ImageArchiveLike],
    ) -> None:
        """Create the namespace, start containerd, kubelet and kube-proxy, wait until the Node is Ready
        and kube-proxy serves. ``wait`` is LocalCluster's poller (fails early when a process exits)."""
        self._make_netns()
        self._make_cgroup_root()
        self._make_credentials(pki)
        self._start_egress_proxy()
        self._bridge("apiserver", host_port=apiserver_port, listen=("127.0.0.1", API_PORT_IN_NODE))
        self._wait_listening(
            "apiserver-node", API_PORT_IN_NODE, timeout=max(1.0, deadline - time.monotonic())
        )
        # The kubernetes Service's endpoint: the same bridge, on the node's address, which pods reach.
        self._listen_in_node(
            "apiserver-endpoint", self.run_dir / "apiserver.sock", listen=(self.address, API_PORT_IN_NODE)
        )
        self._wait_listening(
            "apiserver-endpoint",
            API_PORT_IN_NODE,
            address=self.address,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        self._apply(
            api,
            [
                *incluster.kubernetes_endpoints(address=self.address, port=API_PORT_IN_NODE),
                *incluster.coredns_rbac(),
                *incluster.dns_objects(address=self.address, node_name=self.name),
            ],
            deadline=deadline,
        )
        # Started early: its informers sync while containerd and kubelet start.
        self._start_coredns(bin_dir)

        archives = images
        if "pause" not in archives:
            raise ClusterError("no pause image among the real node's images (see prepare_images)")
        self._start_containerd(bin_dir, sandbox_image=archives["pause"].ref)
        wait("containerd serving", self._containerd_ready, deadline, ["containerd"])
        for archive in archives.values():
            self.ctr("images", "import", str(archive.path))
        self._record(images={n: a.ref for n, a in archives.items()})

        self._start_kubelet(bin_dir, pki)

        def node_ready() -> bool:
            node = api.get_json(f"/api/v1/nodes/{self.name}")
            status = node.get("status", {}) if node else {}
            conditions = status.get("conditions", []) if isinstance(status, dict) else []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        watch = ["containerd", "kubelet", "apiserver-host", "coredns"]
        wait(f"node {self.name} Ready", node_ready, deadline, watch)
        self._start_kube_proxy(bin_dir)
        wait("kube-proxy serving", self._kube_proxy_ready, deadline, ["kube-proxy"])
        wait(
            f"cluster DNS answering at {incluster.DNS_SERVICE_IP}",
            self._dns_ready,
            deadline,
            ["coredns", "kube-proxy", "apiserver-host"],
        )

    def _make_netns(self) -> None:
        ns = self.netns
        run_checked(["ip", "netns", "add", ns], what="creating the node's network namespace")
        for cmd in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{self.address}/32", "dev", "lo"],
            # The bridge exists before any pod, so the Service route below has a device; the CNI
            # bridge plugin adopts it (same name, same gateway address).
            ["link", "add", "cni0", "type", "bridge"],
            ["addr", "add", f"{NODE_GATEWAY}/{NODE_POD_CIDR.split('/')[1]}", "dev", "cni0"],
            ["link", "set", "cni0", "up"],
            ["route", "add", SERVICE_CIDR, "dev", "cni0", "src", NODE_GATEWAY],
        ):
            run_checked(["ip", "-n", ns, *cmd], what=f"setting up namespace {ns}")

    def _make_cgroup_root(self) -> None:
        root = self._fact("cgroup_root").lstrip("/")
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / root
            path.mkdir(exist_ok=True)
            # A new cpuset cgroup (v1) has no CPUs or memory nodes: nothing could run in it.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (path / knob).exists() and not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())

    def _make_credentials(self, pki: Path) -> None:
        server = f"https://127.0.0.1:{API_PORT_IN_NODE}"
        ca = pki / "ca.crt"
        cert, key = pki_mod.issue(
            pki, "kubelet", subject=f"/O=system:nodes/CN=system:node:{self.name}", client=True
        )
        write_cert_kubeconfig(
            self.dir / "kubelet.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="kubelet"
        )
        pki_mod.issue(pki, "kubelet-serving", subject=f"/CN={self.name}", server_sans=(f"IP:{self.address}",))
        cert, key = pki_mod.issue(pki, "kube-proxy", subject="/CN=system:kube-proxy", client=True)
        write_cert_kubeconfig(
            self.dir / "kube-proxy.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="kube-proxy"
        )
        # CoreDNS: a user of its own, whose ClusterRole (incluster.coredns_rbac) lets it only list
        # and watch Services, EndpointSlices and Namespaces; not the admin certificate.
        cert, key = pki_mod.issue(pki, "coredns", subject=f"/CN={incluster.COREDNS_USER}", client=True)
        write_cert_kubeconfig(
            self.dir / "coredns.kubeconfig", server=server, ca=ca, cert=cert, key=key, user="coredns"
        )

    def _apply(self, api: AdminClient, objects: Sequence[dict[str, Any]], *, deadline: float) -> None:
        """Server-side apply ``objects`` as admin; retried until ``deadline`` (the API server may not
        have made kube-system yet)."""
        for obj in objects:
            path = incluster.object_path(obj)
            while True:
                status, body = api.apply(path, obj)
                if status in (200, 201):
                    break
                if time.monotonic() > deadline:
                    text = body.decode(errors="replace")[:2000]
                    raise ClusterError(f"applying {path} failed (HTTP {status}):\n{text}")
                time.sleep(0.2)

    def _bridge(self, name: str, *, host_port: int, listen: tuple[str, int]) -> None:
        """Host 127.0.0.1:host_port <- Unix socket <- listen (inside the namespace)."""
        sock = self.run_dir / f"{name}.sock"
        sock.unlink(missing_ok=True)
        self._add_component(f"{name}-host")
        self._procs.spawn(
            f"{name}-host", ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{host_port}"]
        )
        deadline = time.monotonic() + 10.0
        while not sock.exists():
            if not self._procs.alive(f"{name}-host") or time.monotonic() > deadline:
                log = tail(self._procs.log_file(f"{name}-host"), 20)
                raise ClusterError(f"socat for {name} did not listen on {sock}:\n{log}")
            time.sleep(0.02)
        self._listen_in_node(f"{name}-node", sock, listen=listen)

    def _listen_in_node(self, component: str, sock: Path, *, listen: tuple[str, int]) -> None:
        """A socat inside the namespace: TCP ``listen`` -> the Unix socket ``sock`` of a bridge."""
        address, port = listen
        self._add_component(component)
        self._procs.spawn(
            component,
            self.nsenter_argv(
                "socat", f"TCP-LISTEN:{port},bind={address},fork,reuseaddr", f"UNIX-CONNECT:{sock}"
            ),
            exe="socat",
        )

    def _wait_listening(
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

    def _containerd_config(self, bin_dir: Path, sandbox_image: str) -> str:
        d, run = self.dir, self.run_dir
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        return f"""version = 3
root = "{d / "containerd"}"
state = "{run / "containerd"}"
# Plugins that would write outside the node's directories, and ones this node does not use.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

# The transfer service (ctr images import) needs the verifier; its default dir is under /opt.
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "{d / "image-verifiers"}"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"

[{runtime}]
  # This VM forbids lowering oom_score_adj below 0, even for root: clamp instead of failing runc.
  restrict_oom_score_adj = true
  # Pod network namespaces below containerd's state dir, not in the host's /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_cdi = false

[{runtime}.cni]
  bin_dirs = ["{bin_dir / CNI_BIN_SUBDIR}"]
  conf_dir = "{d / "cni-conf"}"

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{runtime}.containerd.runtimes.runc.options]
  # Debian's runc: built with libseccomp, which the CRI's default seccomp profile needs.
  BinaryName = "{shutil.which("runc") or "runc"}"
  SystemdCgroup = false
"""

    def _cni_config(self) -> str:
        conf = {
            "cniVersion": "1.0.0",
            "name": self._fact("cni_network"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # Nothing leaves the namespace, so nothing to masquerade.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": NODE_POD_CIDR, "gateway": NODE_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        return json.dumps(conf, indent=2) + "\n"

    def _start_containerd(self, bin_dir: Path, *, sandbox_image: str) -> None:
        config = self.dir / "containerd.toml"
        config.write_text(self._containerd_config(bin_dir, sandbox_image))
        (self.dir / "cni-conf").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni-conf" / "10-aliasroll.conflist").write_text(self._cni_config())
        self._add_component("containerd")
        self._procs.spawn(
            "containerd",
            self.nsenter_argv(str(bin_dir / "containerd"), f"--config={config}"),
            exe="containerd",
            # containerd finds its shim on PATH.
            env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
        )

    def _containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        bin_dir = Path(self._fact("bin_dir"))
        result = subprocess.run(
            [str(bin_dir / "ctr"), f"--address={self.containerd_socket}", "version"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def _start_kubelet(self, bin_dir: Path, pki: Path) -> None:
        d = self.dir
        taint_key, taint_value, effect = REAL_NODE_TAINT
        label_key, label_value = REAL_NODE_LABEL
        config = f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Hybrid cgroups (v1 controllers) and no systemd on this machine kind.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {self._fact("cgroup_root")}
containerRuntimeEndpoint: unix://{self.containerd_socket}
address: 0.0.0.0
port: {KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {pki / "kubelet-serving.crt"}
tlsPrivateKeyFile: {pki / "kubelet-serving.key"}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {pki / "ca.crt"}
authorization:
  mode: Webhook
registerWithTaints:
- key: {taint_key}
  value: "{taint_value}"
  effect: {effect}
podLogsDir: {d / "pod-logs"}
volumePluginDir: {d / "volume-plugins"}
failSwapOn: false
# A development machine's disk may be fuller than a server's: never evict for it.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
# Pods with dnsPolicy Default (and the search line of ClusterFirst ones) take the host's file.
resolvConf: /etc/resolv.conf
clusterDomain: {incluster.CLUSTER_DOMAIN}
clusterDNS:
- {incluster.DNS_SERVICE_IP}
"""
        (d / "kubelet.yaml").write_text(config)
        if "sysctls" not in self._info():
            self._record(sysctls=sysctls.read_current())
            sysctls.hold_machine(self._fact("id"), alive=self._node_alive)
        self._add_component("kubelet")
        self._procs.spawn(
            "kubelet",
            self.nsenter_argv(
                str(bin_dir / "kubelet"),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={d / 'kubelet'}",
                f"--cert-dir={d / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                f"--node-labels={label_key}={label_value}",
                "--v=1",
            ),
            exe="kubelet",
        )

    def _start_kube_proxy(self, bin_dir: Path) -> None:
        d = self.dir
        config = f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {d / "kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: {self.name}
bindAddress: {self.address}
healthzBindAddress: 127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {NODE_POD_CIDR}
nodePortAddresses: ["{self.address}/32"]
# 0: leave the machine-wide conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"""
        (d / "kube-proxy.yaml").write_text(config)
        self._add_component("kube-proxy")
        self._procs.spawn(
            "kube-proxy",
            self.nsenter_argv(str(bin_dir / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"),
            exe="kube-proxy",
        )

    def _start_coredns(self, bin_dir: Path) -> None:
        """CoreDNS on the node's address, reading the API server through the bridge at 127.0.0.1."""
        corefile = self.dir / "Corefile"
        corefile.write_text(
            incluster.corefile(
                listen=self.address,
                kubeconfig=self.dir / "coredns.kubeconfig",
                reverse_cidrs=(SERVICE_CIDR, NODE_POD_CIDR),
            )
        )
        self._add_component("coredns")
        self._procs.spawn(
            "coredns",
            self.nsenter_argv(str(bin_dir / "coredns"), "-conf", str(corefile)),
            exe="coredns",
        )

    def _dns_ready(self) -> bool:
        """The kubernetes Service's name resolves through the kube-dns ClusterIP: CoreDNS has synced
        with the API server and kube-proxy has programmed the Service."""
        name = f"kubernetes.default.svc.{incluster.CLUSTER_DOMAIN}"
        try:
            answer = self.resolve(name, timeout=1.0)
        except (ClusterError, subprocess.TimeoutExpired):
            return False
        return answer.get("answers") == [incluster.KUBERNETES_SERVICE_IP]

    def _kube_proxy_ready(self) -> bool:
        code = (
            "import urllib.request,sys;"
            f"r=urllib.request.urlopen('http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz',timeout=2);"
            "sys.exit(0 if r.status==200 else 1)"
        )
        return self.run("python3", "-c", code, check=False, timeout=10).returncode == 0

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Remove everything recorded: processes (kubelet and kube-proxy first, then the containers
        below the node's cgroup, containerd's shims and containerd, then the rest in start order:
        the egress proxy, the bridges, CoreDNS), mounts under the node's dirs, the namespace, the
        cgroups, kubelet's log links, the CNI cache, the dirs. The API objects it wrote (the
        kubernetes and kube-dns endpoints, CoreDNS's RBAC) go with the cluster's etcd."""
        info = self._info()
        if not info:
            return
        problems: list[str] = []
        components = self.components
        first = [c for c in ("kubelet", "kube-proxy") if c in components]
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(first, grace=10.0).items()]
        self._restore_sysctls()
        self._kill_containers()
        self._kill_shims()
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(["containerd"], grace=10.0).items()]
        rest = [c for c in components if c not in ("kubelet", "kube-proxy", "containerd")]
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(rest, grace=5.0).items()]
        if problems:
            raise ClusterError(f"could not stop {', '.join(problems)}; nothing else of the real node removed")

        dirs = [self.dir]
        if isinstance(info.get("run_dir"), str):
            dirs.append(self.run_dir)
        for point in _mounts_below(dirs):
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
        left = _mounts_below(dirs)
        if isinstance(info.get("netns"), str) and self.netns_path.exists():
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        self._remove_cgroups()
        self._remove_links()
        if left:
            # Never delete through a mount (a bind mount could lead into the host's own files).
            raise ClusterError(
                f"could not unmount {', '.join(map(str, left))}; the node's dirs are left in place"
            )
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._state.update(real_node={**info, "stopped": True})

    def _restore_sysctls(self) -> None:
        saved = self._info().get("sysctls")
        if not isinstance(saved, dict) or "kubelet" in [c for c in self.components if self._procs.alive(c)]:
            return
        node_id = self._info().get("id")
        if not (isinstance(node_id, str) and sysctls.release_machine(node_id, alive=self._node_alive)):
            # A node recorded before the machine's ledger existed: its own values, as then.
            sysctls.write({k: v for k, v in saved.items() if isinstance(v, str)})
        self._record(sysctls={})  # handed back: a second stop() writes nothing

    @staticmethod
    def _node_alive(node_id: str) -> bool:
        """A real node of this machine (this one or another) still has its run dir: stop() removes it last."""
        return _run_dir(node_id).is_dir()

    def _cgroup_dirs(self) -> list[Path]:
        """Every cgroup below (and including) the node's cgroup root, deepest first."""
        root = self._info().get("cgroup_root")
        if not isinstance(root, str) or not root.strip("/"):
            return []
        found: list[Path] = []
        for hierarchy in _cgroup_hierarchies():
            top = hierarchy / root.lstrip("/")
            if top.is_dir():
                found += [Path(p) for p, _, _ in os.walk(top)]
        return sorted(found, key=lambda p: len(p.parts), reverse=True)

    def _kill_containers(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = set()
            for cg in self._cgroup_dirs():
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in (cg / "cgroup.procs").read_text().split()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        """containerd's shims leave containerd's process group, but keep its environment (our marker)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and owned_by(int(entry.name), self.state_dir, "containerd-shim-runc-v2"):
                pids.append(int(entry.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(owned_by(p, self.state_dir, None) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _remove_cgroups(self) -> None:
        for cg in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                cg.rmdir()

    def _remove_links(self) -> None:
        logs = str(self.dir / "pod-logs")
        with contextlib.suppress(OSError):
            for link in CONTAINER_LOG_LINKS.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(logs + "/"):
                        link.unlink()
        # CNI results: this node's network by name; containerd's loopback network (same name on every
        # node) by the pod network namespace each file names, which lives under this node's run dir.
        network = self._info().get("cni_network")
        run_dir = self._info().get("run_dir")
        with contextlib.suppress(OSError):
            for cached in CNI_CACHE_DIR.iterdir():
                mine = isinstance(network, str) and bool(network) and cached.name.startswith(f"{network}-")
                if not mine and isinstance(run_dir, str) and cached.name.startswith("cni-loopback-"):
                    with contextlib.suppress(OSError, ValueError):
                        netns = json.loads(cached.read_text()).get("netns", "")
                        mine = isinstance(netns, str) and netns.startswith(run_dir + "/")
                if mine:
                    cached.unlink(missing_ok=True)


__all__ = [
    "DEFAULT_IMAGES",
    "NODE_ADDRESS",
    "NODE_POD_CIDR",
    "OWNER_ENV",
    "REAL_NODE_LABEL",
    "REAL_NODE_NAME",
    "REAL_NODE_TAINT",
    "RealNode",
    "pod_placement",
]
