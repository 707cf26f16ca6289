"""The real node: containerd, kubelet and kube-proxy in a network namespace of their own, beside the
kwok node, so pods that ask for it run real containers (see /work/shared/ref/real-node.md for the
pitfalls each setting answers). ``RealNode`` ties together:

- nodestate.py: every name the node uses and every process it started, recorded in ``state.json``
  (key ``real_node``) before each is created, so ``stop()`` also cleans up after a start that failed
  half-way.
- nodenet.py: the network namespace ``aliasroll-<id>`` (the node's address on ``lo``, the pods'
  bridge ``cni0``, the Service range routed to it; kube-proxy's iptables rules live there only, the
  host's own tables and routes are never touched), and the bridges across its boundary: socat
  processes carrying the API server (``127.0.0.1:6443`` for the node's kubeconfigs,
  ``<node address>:6443`` for pods: the ``kubernetes`` Service's endpoints, written by the node,
  incluster.py) and ``expose_host_port``'s host ports in through Unix sockets, and the CONNECT proxy
  the API server's ``cluster`` egress goes out through (egress.py).
- nodecomponents.py: containerd, kubelet, kube-proxy and CoreDNS (the cluster DNS), their configs
  and credentials. Files in ``<state dir>/node/``; sockets and containerd's state in
  ``/run/aliasroll-<id>/``.
- nodehost.py: what the node changes on the host outside its namespace (its cgroup
  ``/aliasroll-<id>``, kubelet's cgroupRoot; mounts below its dirs; kubelet's log links and CNI's
  cached results; the kernel settings kubelet rewrites), and how teardown undoes each.

``resolve()`` asks the cluster DNS (CoreDNS, nodecomponents.py) from inside the namespace: host
processes reach neither the kube-dns ClusterIP nor CoreDNS.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import incluster, nodehost, nodenet
from .apiserver import AdminClient
from .bins import missing_node_binaries
from .common import ClusterError, run_checked, tail
from .nodecomponents import KUBE_PROXY_HEALTHZ_PORT, REAL_NODE_LABEL, REAL_NODE_TAINT, Components
from .nodenet import API_PORT_IN_NODE, NETNS_DIR, NODE_ADDRESS, NODE_POD_CIDR, Bridges
from .nodestate import NodeRecord, run_dir_for
from .processes import OWNER_ENV, Processes
from .state import State

REAL_NODE_NAME = "aliasroll-real-node"
#: The stdlib DNS client the readiness check and ``resolve()`` run inside the namespace.
DNS_CLIENT = Path(__file__).with_name("dnsclient.py")
#: Images loaded into the node's containerd at start; each test may load more with ``load_images``.
DEFAULT_IMAGES = ("pause",)


class ImageArchiveLike(Protocol):
    """What ``localkube.images.ensure_images`` returns for each image."""

    @property
    def ref(self) -> str: ...

    @property
    def path(self) -> Path: ...


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


class RealNode:
    """The real node of one local cluster (see the module's doc). Made by LocalCluster; tests use
    ``name``, ``address``, ``netns``, ``run()``/``nsenter_argv()``, ``expose_host_port()``,
    ``load_images()`` and ``resolve()`` (the cluster DNS, from inside the namespace)."""

    def __init__(self, state_dir: Path, *, processes: Processes, state: State) -> None:
        self.state_dir = state_dir
        self._procs = processes
        self._record = NodeRecord(state)
        self._bridges = Bridges(processes, self._record)
        self._components = Components(processes, self._record, self.dir)

    # ------------------------------------------------------------------------------------ recorded facts

    @property
    def name(self) -> str:
        return self._record.info().get("name", REAL_NODE_NAME)  # type: ignore[no-any-return]

    @property
    def address(self) -> str:
        """The node's IP inside its namespace (its InternalIP; where exposed host ports listen)."""
        return self._record.info().get("address", NODE_ADDRESS)  # type: ignore[no-any-return]

    @property
    def images(self) -> dict[str, str]:
        """Images loaded into the node's containerd: name (e.g. "pause") -> ref for pod specs."""
        return self._record.images

    @property
    def netns(self) -> str:
        """The network namespace's name (``ip netns`` lists it)."""
        return self._record.fact("netns")

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def run_dir(self) -> Path:
        return self._record.run_dir

    @property
    def containerd_socket(self) -> Path:
        return self._components.containerd_socket

    @property
    def components(self) -> list[str]:
        """This node's processes, in start order (names of their PID and log files)."""
        return self._record.components

    # ------------------------------------------------------------------------------------ for tests

    def nsenter_argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the node's network namespace (network only: the host's files, PATH)."""
        return nodenet.nsenter_argv(self.netns, *argv)

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
        return run_checked(
            [
                str(self._record.bin_dir / "ctr"),
                f"--address={self.containerd_socket}",
                "--namespace=k8s.io",
                *args,
            ],
            what="ctr",
            timeout=timeout,
        )

    def load_images(self, names: Sequence[str]) -> dict[str, str]:
        """Build (or reuse) the named images and import them into the node; returns name -> ref."""
        archives = _ensure_images(names)
        for archive in archives.values():
            self.ctr("images", "import", str(archive.path))
        loaded = {name: archive.ref for name, archive in archives.items()}
        self._record.update(images={**self.images, **loaded})
        return loaded

    def expose_host_port(self, port: int, *, timeout: float = 20.0) -> tuple[str, int]:
        """Make ``127.0.0.1:port`` of the host reachable from pods at the returned (address, port):
        the node's address inside the namespace, through a Unix socket and two socat processes."""
        name = f"port-{port}"
        if f"{name}-node" not in self.components:
            self._bridges.bridge(name, host_port=port, listen=(self.address, port))
            self._bridges.wait_listening(f"{name}-node", port, timeout=timeout)
        return self.address, port

    def start_process(self, name: str, argv: Sequence[str], *, exe: str) -> None:
        """Start a process of a test's own inside the node's namespace (e.g. a NetworkPolicy
        controller), recorded like the node's own components: ``stop()`` ends it with them."""
        nodenet.spawn_in_node(self._procs, self._record, name, argv, exe=exe)

    def stop_process(self, name: str, *, grace: float = 10.0) -> None:
        """End a process ``start_process`` started (SIGTERM, then SIGKILL after ``grace`` s)."""
        left = self._procs.terminate([name], grace=grace)
        if left:
            raise ClusterError(f"could not stop {name} (pid {left[name]})")
        self._record.remove_component(name)

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
        self._record.update(
            id=node_id,
            name=REAL_NODE_NAME,
            address=NODE_ADDRESS,
            netns=f"aliasroll-{node_id}",
            run_dir=str(run_dir_for(node_id)),
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
        path.write_text(nodenet.egress_selector_config(self.run_dir / "egress.sock"))
        return path

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
        nodenet.make_netns(self.netns, address=self.address)
        nodehost.make_cgroup_root(self._record.fact("cgroup_root"))
        self._components.make_credentials(pki, name=self.name, address=self.address)
        self._bridges.start_egress_proxy(node_name=self.name, address=self.address)
        self._bridges.bridge("apiserver", host_port=apiserver_port, listen=("127.0.0.1", API_PORT_IN_NODE))
        self._bridges.wait_listening(
            "apiserver-node", API_PORT_IN_NODE, timeout=max(1.0, deadline - time.monotonic())
        )
        # The kubernetes Service's endpoint: the same bridge, on the node's address, which pods reach.
        self._bridges.listen_in_node(
            "apiserver-endpoint", self.run_dir / "apiserver.sock", listen=(self.address, API_PORT_IN_NODE)
        )
        self._bridges.wait_listening(
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
        self._components.start_coredns(bin_dir, address=self.address)

        archives = images
        if "pause" not in archives:
            raise ClusterError("no pause image among the real node's images (see prepare_images)")
        self._components.start_containerd(bin_dir, sandbox_image=archives["pause"].ref)
        wait("containerd serving", self._components.containerd_ready, deadline, ["containerd"])
        for archive in archives.values():
            self.ctr("images", "import", str(archive.path))
        self._record.update(images={n: a.ref for n, a in archives.items()})

        self._components.start_kubelet(bin_dir, pki, name=self.name, address=self.address)

        def node_ready() -> bool:
            node = api.get_json(f"/api/v1/nodes/{self.name}")
            status = node.get("status", {}) if node else {}
            conditions = status.get("conditions", []) if isinstance(status, dict) else []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        watch = ["containerd", "kubelet", "apiserver-host", "coredns"]
        wait(f"node {self.name} Ready", node_ready, deadline, watch)
        self._components.start_kube_proxy(bin_dir, name=self.name, address=self.address)
        wait("kube-proxy serving", self._kube_proxy_ready, deadline, ["kube-proxy"])
        wait(
            f"cluster DNS answering at {incluster.DNS_SERVICE_IP}",
            self._dns_ready,
            deadline,
            ["coredns", "kube-proxy", "apiserver-host"],
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
        info = self._record.info()
        if not info:
            return
        problems: list[str] = []
        components = self.components
        first = [c for c in ("kubelet", "kube-proxy") if c in components]
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(first, grace=10.0).items()]
        nodehost.restore_sysctls(self._record, alive=self._procs.alive)
        nodehost.kill_containers(self._record.info().get("cgroup_root"))
        nodehost.kill_shims(self.state_dir)
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(["containerd"], grace=10.0).items()]
        rest = [c for c in components if c not in ("kubelet", "kube-proxy", "containerd")]
        problems += [f"{c} (pid {p})" for c, p in self._procs.terminate(rest, grace=5.0).items()]
        if problems:
            raise ClusterError(f"could not stop {', '.join(problems)}; nothing else of the real node removed")

        dirs = [self.dir]
        if isinstance(info.get("run_dir"), str):
            dirs.append(self.run_dir)
        left = nodehost.unmount_below(dirs)
        if isinstance(info.get("netns"), str):
            nodenet.delete_netns(self.netns)
        nodehost.remove_cgroups(self._record.info().get("cgroup_root"))
        nodehost.remove_log_links(self.dir / "pod-logs")
        nodehost.remove_cni_results(
            self._record.info().get("cni_network"), self._record.info().get("run_dir")
        )
        if left:
            # Never delete through a mount (a bind mount could lead into the host's own files).
            raise ClusterError(
                f"could not unmount {', '.join(map(str, left))}; the node's dirs are left in place"
            )
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._record.mark_stopped(info)


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
