"""LocalCluster: the control plane (etcd, kube-apiserver, controllers, kwok's fake node) and, when
asked, a real node beside it (containerd, kubelet, kube-proxy in a network namespace, and for its
pods the kubernetes Service's endpoints and cluster DNS: node.py, incluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import apiserver, controllers, etcd, kwok
from .bins import CONTROL_PLANE, resolve_bin_dir
from .common import DEFAULT_STATE_DIR, ClusterError, KubectlError, free_ports, tail, write_private
from .kubeconfig import kubeconfig_text, write_cert_kubeconfig
from .node import DEFAULT_IMAGES, ImageArchiveLike, RealNode
from .pki import make_pki
from .processes import Processes
from .state import MARKER, State

GATEWAY_API_GROUP = "gateway.networking.k8s.io"


class LocalCluster:
    """One local control plane, living in ``state_dir``.

    Constructing it is cheap and starts nothing. ``start()`` brings everything up and returns once the
    fake node (and, with ``real_node=True``, the real node) is Ready; ``stop()`` stops the processes
    (by their saved PIDs), removes what the real node made, and removes the state dir. An object made
    for a state dir whose cluster is already running (``is_running()``), e.g. one started by
    ``localcluster.py up``, can use ``kubectl()`` and friends, and ``stop()`` it, without ``start()``.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        bin_dir: Path | str | None = None,
        start_timeout: float = 120.0,
        real_node: bool = False,
        node_images: Sequence[str] = DEFAULT_IMAGES,
    ) -> None:
        self.state_dir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR).absolute()
        self._bin_dir = Path(bin_dir).absolute() if bin_dir is not None else None
        self.start_timeout = start_timeout
        self.node_name = kwok.NODE_NAME
        self.startup_seconds: float | None = None
        #: Seconds from start() until each readiness step held (filled by start()).
        self.phase_seconds: dict[str, float] = {}
        #: Seconds the real node's images took to build or check (before start()'s clock started).
        self.images_seconds: float | None = None
        self._started_at = 0.0
        self._procs = Processes(self.state_dir)
        self._state = State(self.state_dir)
        self._apiserver_port: int | None = None
        self._want_real_node = real_node
        #: Images (names known to localkube.images) loaded into the real node's containerd at start.
        self._node_images = tuple(node_images)
        self._node: RealNode | None = None

    # ------------------------------------------------------------------------------------ paths & state

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self._procs.logs_dir

    @property
    def pids_dir(self) -> Path:
        return self._procs.pids_dir

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig; used by kubectl, the controllers and kwok alike."""
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: the requests of the operator's ServiceAccounts, as metadata
        (apiserver.audit_policy); older parts rotated beside it (``audit_logs``)."""
        return self.logs_dir / apiserver.AUDIT_LOG_NAME

    def audit_logs(self) -> list[Path]:
        """The audit log and its rotated parts, oldest first."""
        stem = self.audit_log.stem
        rotated = sorted(self.logs_dir.glob(f"{stem}-*{self.audit_log.suffix}"))
        return [*rotated, *([self.audit_log] if self.audit_log.exists() else [])]

    @property
    def server(self) -> str:
        """The kube-apiserver URL, e.g. ``https://127.0.0.1:41234``."""
        if self._apiserver_port is not None:
            return f"https://127.0.0.1:{self._apiserver_port}"
        server = self._state.get("server")
        if not isinstance(server, str):
            raise ClusterError(f"no cluster state in {self.state_dir} (not started?)")
        return server

    @property
    def bin_dir(self) -> Path:
        """Directory with the built binaries (resolved on first use, see ``resolve_bin_dir``)."""
        if self._bin_dir is None:
            recorded = self._state.get("bin_dir")
            if isinstance(recorded, str) and os.access(Path(recorded) / "kubectl", os.X_OK):
                self._bin_dir = Path(recorded)
            else:
                self._bin_dir = resolve_bin_dir()
        return self._bin_dir

    @property
    def node(self) -> RealNode:
        """The real node (started with ``real_node=True`` or ``up --real-node``)."""
        if self._node is None and self._state.get("real_node"):
            self._node = RealNode(self.state_dir, processes=self._procs, state=self._state)
        if self._node is None:
            raise ClusterError(
                f"the cluster in {self.state_dir} has no real node (start it with real_node=True)"
            )
        return self._node

    @property
    def has_real_node(self) -> bool:
        return self._node is not None or bool(self._state.get("real_node"))

    @property
    def components(self) -> list[str]:
        """Every process of this cluster: the control plane, then the real node's (if any)."""
        return [*CONTROL_PLANE, *(self.node.components if self.has_real_node else [])]

    def log_file(self, component: str) -> Path:
        return self._procs.log_file(component)

    # ------------------------------------------------------------------------------------ public helpers

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """A copy of os.environ with KUBECONFIG pointing at this cluster (for running the operator)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        return env

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        kubeconfig: Path | None = None,
        timeout: float | None = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (admin unless ``kubeconfig`` is given).

        Text mode, output captured. With ``check`` a non-zero exit raises KubectlError (a
        CalledProcessError whose message includes kubectl's stderr).
        """
        cmd = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.state_dir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def mint_token(self, namespace: str, service_account: str, expiration_seconds: int = 3600) -> str:
        """A bound token for ServiceAccount ``namespace/service_account`` (TokenRequest API, min. 600 s)."""
        if expiration_seconds < 600:
            raise ValueError("the TokenRequest API requires expiration_seconds >= 600")
        result = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={expiration_seconds}s"
        )
        token = result.stdout.strip()
        if not token:
            raise ClusterError(f"kubectl create token {namespace}/{service_account} printed no token")
        return token

    def write_kubeconfig_for_token(self, path: Path | str, token: str, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this cluster (same server and CA) that authenticates with ``token``."""
        path = Path(path)
        text = kubeconfig_text(
            server=self.server,
            ca_pem=self.ca_file.read_bytes(),
            user="token-user",
            credentials={"token": token},
            namespace=namespace,
        )
        write_private(path, text)
        return path

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every component's log, for printing when a test fails."""
        parts = []
        for component in self.components:
            path = self.log_file(component)
            parts.append(f"===== {component} ({path}, last {lines} lines) =====\n{tail(path, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------ health

    def _admin(self) -> apiserver.AdminClient:
        return apiserver.AdminClient(server=self.server, pki=self.pki_dir)

    def component_status(self) -> dict[str, int | None]:
        """PID of each component, or None when it is not running."""
        return {c: (self._procs.saved_pid(c) if self._procs.alive(c) else None) for c in self.components}

    def is_running(self) -> bool:
        """All components alive (by saved PID) and the apiserver answering /readyz."""
        if not self._state.exists() or not all(self._procs.alive(c) for c in self.components):
            return False
        try:
            client = self._admin()
        except (OSError, ClusterError):
            return False
        status, body = client.get("/readyz", timeout=3.0)
        return status == 200 and body.strip() == b"ok"

    # ------------------------------------------------------------------------------------ start

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the control plane (and the real node when asked) and wait until the nodes are Ready.

        Leftovers of an earlier, dead cluster in the state dir are cleaned up first; a cluster that
        still runs there is an error (stop it, or use it without starting). On failure everything
        started so far is stopped and removed, the logs stay in the state dir and ClusterError
        carries the failing component's log tail.
        """
        self.phase_seconds = {}
        if self.is_running():
            raise ClusterError(f"a cluster is already running in {self.state_dir}")
        # Always ask build.sh (a ~2 s no-op when cached) so that a bumped pin is rebuilt before use.
        bin_dir = self._bin_dir = self._bin_dir or resolve_bin_dir(node=self._want_real_node)
        images: dict[str, ImageArchiveLike] = {}
        if self._want_real_node:
            RealNode.check_prerequisites(bin_dir)
            # Before the clock starts: a first build (or another build holding the image lock) can
            # take minutes, which are no part of the cluster's start.
            t = time.monotonic()
            images = RealNode.prepare_images(self._node_images)
            self.images_seconds = round(time.monotonic() - t, 2)
        started = self._started_at = time.monotonic()
        self._prepare_state_dir()
        try:
            if self._want_real_node:
                self._node = RealNode(self.state_dir, processes=self._procs, state=self._state)
                self._node.plan(bin_dir)
            self._start(bin_dir, started)
            if self._node is not None:
                self._node.start(
                    bin_dir=bin_dir,
                    apiserver_port=self._apiserver_port or 0,
                    pki=self.pki_dir,
                    api=self._admin(),
                    wait=self._wait,
                    deadline=started + self.start_timeout,
                    images=images,
                )
        except BaseException:
            self._teardown()
            raise
        self.startup_seconds = time.monotonic() - started
        self._state.update(startup_seconds=round(self.startup_seconds, 2), phase_seconds=self.phase_seconds)

    def _prepare_state_dir(self) -> None:
        d = self.state_dir
        if d.exists() and any(d.iterdir()):
            if not self._state.owned():
                raise ClusterError(
                    f"{d} is not empty and was not made by localcluster.py; refusing to use it"
                )
            self._teardown()  # processes, namespace and mounts of a dead or half-dead earlier run
            for child in d.iterdir():
                if child.name == MARKER:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        d.mkdir(parents=True, exist_ok=True)
        self._state.mark()
        for sub in (self.pki_dir, self.logs_dir, self.pids_dir):
            sub.mkdir(parents=True, exist_ok=True)

    def _spawn(self, bin_dir: Path, component: str, args: Sequence[str]) -> None:
        self._procs.spawn(component, [str(bin_dir / component), *args])

    def _start(self, bin_dir: Path, started: float) -> None:
        deadline = started + self.start_timeout
        etcd_port, api_port, cm_port, sched_port = free_ports(4)
        self._apiserver_port = api_port
        etcd_data = etcd.make_data_dir(self.state_dir)
        self._state.update(
            server=self.server,
            bin_dir=str(bin_dir),
            etcd_data_dir=str(etcd_data),
            ports={
                "etcd": etcd_port,
                "apiserver": api_port,
                "kube-controller-manager": cm_port,
                "kube-scheduler": sched_port,
            },
            node=self.node_name,
        )
        make_pki(self.pki_dir)
        self.phase_seconds["certificates made"] = round(time.monotonic() - self._started_at, 2)
        write_cert_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca=self.ca_file,
            cert=self.pki_dir / "admin.crt",
            key=self.pki_dir / "admin.key",
            user="admin",
        )
        client = self._admin()
        pki = self.pki_dir

        self._spawn(bin_dir, "etcd", etcd.args(data_dir=etcd_data, port=etcd_port))
        self._wait("etcd healthy", lambda: etcd.healthy(etcd_port), deadline, ["etcd"])

        self._spawn(
            bin_dir,
            "kube-apiserver",
            apiserver.args(
                etcd_url=etcd.url(etcd_port),
                port=api_port,
                pki=pki,
                egress_config=self._node.egress_config() if self._node is not None else None,
                audit_policy_file=apiserver.write_audit_policy(self.state_dir / "audit-policy.yaml"),
                audit_log=self.audit_log,
            ),
        )
        self._wait("kube-apiserver ready", client.ready, deadline, ["etcd", "kube-apiserver"])

        self._spawn(
            bin_dir,
            "kube-controller-manager",
            controllers.controller_manager_args(kubeconfig=self.kubeconfig, port=cm_port, pki=pki),
        )
        self._spawn(
            bin_dir, "kube-scheduler", controllers.scheduler_args(kubeconfig=self.kubeconfig, port=sched_port)
        )
        stages = kwok.stage_files(bin_dir, self.state_dir)
        self._spawn(bin_dir, "kwok", kwok.args(kubeconfig=self.kubeconfig, stages=stages))
        self.kubectl("create", "-f", "-", input=json.dumps(kwok.node_manifest(self.node_name)))

        def node_ready() -> bool:
            lease = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
            return (
                kwok.node_ready(client.get_json(f"/api/v1/nodes/{self.node_name}"))
                and client.get(lease)[0] == 200
            )

        def default_service_account() -> bool:
            return client.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

        everything = list(CONTROL_PLANE)
        self._wait("kube-controller-manager healthy", controllers.healthz(cm_port), deadline, everything)
        self._wait("kube-scheduler healthy", controllers.healthz(sched_port), deadline, everything)
        self._wait("default ServiceAccount created", default_service_account, deadline, everything)
        self._wait(f"node {self.node_name} Ready, untainted, with a Lease", node_ready, deadline, everything)

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, watch: Sequence[str]) -> None:
        """Poll ``check`` until it holds; fail early when a watched component exits, or at the deadline."""
        delay = 0.05
        while True:
            for component in watch:
                if not self._procs.alive(component):
                    code = self._procs.exit_code(component)
                    raise ClusterError(
                        f"{component} exited{f' with exit code {code}' if code is not None else ''} while "
                        f"waiting for {what}; {self.log_file(component)} ends with:\n"
                        f"{tail(self.log_file(component), 40)}"
                    )
            if check():
                self.phase_seconds[what] = round(time.monotonic() - self._started_at, 2)
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- {c} ({self.log_file(c)}):\n{tail(self.log_file(c), 40)}" for c in watch
                )
                raise ClusterError(f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{tails}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop every component (saved PIDs: SIGTERM, wait, SIGKILL), remove what the real node made
        (namespace, mounts, cgroups) and the state dir."""
        self._teardown()
        if self._state.owned():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._apiserver_port = None
        self._node = None

    def _teardown(self) -> None:
        problems: list[str] = []
        if self.has_real_node:
            try:
                self.node.stop()
            except ClusterError as e:
                problems.append(str(e))
        # Clients first, etcd last: a kube-apiserver whose etcd is gone takes ~10 s to shut down.
        leftovers = {**self._procs.terminate(CONTROL_PLANE[1:]), **self._procs.terminate(CONTROL_PLANE[:1])}
        etcd.remove_data_dir(self._state.get("etcd_data_dir"))
        if leftovers:
            problems.append(f"could not stop {', '.join(f'{c} (pid {p})' for c, p in leftovers.items())}")
        if problems:
            raise ClusterError("; ".join(problems))

    # ------------------------------------------------------------------------------------ extras

    def install_gateway_api_crds(self, timeout: float = 60.0) -> None:
        """Server-side apply the Gateway API standard CRDs and wait until HTTPRoutes are served."""
        crd_dir = self.bin_dir / "gateway-api-crds"
        files = sorted(crd_dir.glob("*.yaml"))
        if not files:
            raise ClusterError(f"no Gateway API CRD files in {crd_dir}")
        args = [arg for f in files for arg in ("-f", str(f))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *args)
        names = [f"{f.stem.split('_', 1)[1]}.{GATEWAY_API_GROUP}" for f in files if "_" in f.stem]
        self.kubectl(
            "wait",
            "--for=condition=Established",
            f"--timeout={timeout:.0f}s",
            *(f"crd/{n}" for n in names),
            timeout=timeout + 30,
        )
        deadline = time.monotonic() + timeout
        while self.kubectl("get", f"httproutes.{GATEWAY_API_GROUP}", "-A", check=False).returncode != 0:
            if time.monotonic() >= deadline:
                raise ClusterError("HTTPRoute CRD is Established but httproutes are not served")
            time.sleep(0.2)

    def selftest(self, namespace: str = "default", timeout: float = 120.0) -> dict[str, float]:
        """A 2-replica Deployment must become Available on the fake node, and vanish when deleted.

        Returns the seconds each step took.
        """
        name = "localcluster-selftest"
        timings: dict[str, float] = {}
        self.kubectl("delete", "deployment", name, "-n", namespace, "--ignore-not-found", "--wait=true")
        t = time.monotonic()
        self.kubectl(
            "create",
            "deployment",
            name,
            "-n",
            namespace,
            "--replicas=2",
            "--image=registry.invalid/aliasroll/selftest:never-pulled",
        )
        for condition in ("condition=Available", "jsonpath={.status.availableReplicas}=2"):
            self.kubectl(
                "wait",
                "-n",
                namespace,
                f"deployment/{name}",
                f"--for={condition}",
                f"--timeout={timeout:.0f}s",
                timeout=timeout + 30,
            )
        timings["available"] = time.monotonic() - t
        pods = self.kubectl("get", "pods", "-n", namespace, "-l", f"app={name}", "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(pods)["items"]
        bad = [
            p["metadata"]["name"]
            for p in items
            if p["status"].get("phase") != "Running" or p["spec"].get("nodeName") != self.node_name
        ]
        if len(items) != 2 or bad:
            raise ClusterError(f"expected 2 Running pods on {self.node_name}, got {len(items)} (bad: {bad})")
        t = time.monotonic()
        # Background cascade: the garbage collector deletes the ReplicaSet and pods; kwok finalizes them.
        self.kubectl("delete", "deployment", name, "-n", namespace, "--cascade=background", "--wait=true")
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "pods", "-n", namespace, "-l", f"app={name}", "-o", "name").stdout.strip():
            if time.monotonic() >= deadline:
                raise ClusterError(f"pods of deleted Deployment {name} still exist after {timeout:.0f} s")
            time.sleep(0.1)
        timings["garbage_collected"] = time.monotonic() - t
        return timings
