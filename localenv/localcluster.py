"""A local Kubernetes control plane built from source, for development and end-to-end tests.

No container runtime is needed: etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as
plain processes, and kwok plays the kubelet of one fake node, so pods scheduled to it become Running and
Ready (no container ever runs) and Deployments become Available. Binaries come from ``localenv/build.sh``
(or the directory named by ``ALIASROLL_CLUSTER_BIN_DIR``).

Command line (default state dir: ``<repo>/.work/cluster``)::

    python localenv/localcluster.py up [--dir DIR]        # start in the background, print the kubeconfig
    python localenv/localcluster.py status [--dir DIR]    # exit 0 when running and healthy, 1 otherwise
    python localenv/localcluster.py selftest [--dir DIR]  # a 2-replica Deployment must become Available
    python localenv/localcluster.py gateway-crds [--dir DIR]  # install the Gateway API standard CRDs
    python localenv/localcluster.py down [--dir DIR]      # stop by saved PIDs, remove the state dir
    python localenv/localcluster.py kubectl-path          # print the built kubectl's path (stdout only)

Library (pytest)::

    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.kubectl("get", "nodes")
        token = cluster.mint_token("default", "aliasroll")
        cluster.write_kubeconfig_for_token(tmp_path / "sa.kubeconfig", token)

Measured on the 2-core development machine with warm binaries (build.sh a no-op): ``up`` took 9.5-12 s
over eight runs (17.5 s once, while a second cluster started alongside). Typical timeline: certificates
made at 0.5 s, etcd healthy at 0.8 s, kube-apiserver ready at 4 s, controller-manager and scheduler healthy
at 4.5 s, then ~5 s until the controller-manager, which mints a token per controller
(``--use-service-account-credentials``), has created the ``default`` ServiceAccount; the kwok node is
Ready by then. The selftest Deployment (2 replicas) is Available 0.5-0.9 s after creation, and ``down``
takes about 1.5 s.

State dir layout: ``pki/`` (CA, serving, admin and service-account keys), ``kubeconfig`` (admin,
system:masters), ``logs/<component>.log``, ``pids/<component>.pid``, ``state.json``. etcd keeps its data
on tmpfs (``/dev/shm``) when available. Every port is picked free at start, so several clusters (different
state dirs) can run at once.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".work" / "cluster"
BUILD_SCRIPT = REPO_ROOT / "localenv" / "build.sh"
BIN_DIR_ENV = "ALIASROLL_CLUSTER_BIN_DIR"

#: Components in start order; each is also the name of its binary, log file and PID file.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REQUIRED_BINARIES = (*COMPONENTS, "kubectl")

CLUSTER_NAME = "aliasroll-local"
NODE_NAME = "kwok-node-0"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
KWOK_STAGE_DIRS = ("node/fast", "node/heartbeat-with-lease", "pod/fast")
#: A fake pod becomes Ready this long after it starts (a duration such as "1500ms") when it carries
#: this annotation: tests that watch capacity through a rollout need pods that take time, as real
#: ones do. Without it, fake pods are Ready at once.
READY_DELAY_ANNOTATION = "kwok.localenv/ready-delay"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"

#: Written into the state dir by start(); down() only ever deletes a directory that carries it.
_MARKER = ".aliasroll-localcluster"
#: Set in every component's environment; a saved PID is only signalled when its process carries it.
_OWNER_ENV = "ALIASROLL_LOCALCLUSTER_DIR"


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike CalledProcessError, str() includes what kubectl printed."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        text = super().__str__()
        if err:
            text += f"\nstderr: {err}"
        if out:
            text += f"\nstdout: {out}"
        return text


@dataclass(frozen=True)
class _Ports:
    etcd: int
    apiserver: int
    controller_manager: int
    scheduler: int


# --------------------------------------------------------------------------------------------- helpers


def _free_ports(count: int) -> list[int]:
    """Distinct free 127.0.0.1 ports (all sockets stay bound until every port is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly large) text file."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            chunk = min(size, max(64 * 1024, lines * 1024))
            f.seek(size - chunk)
            data = f.read()
    except FileNotFoundError:
        return "(no log file)"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{result.stderr.strip()}")


def _process_state(pid: int) -> str | None:
    """The one-letter /proc state of ``pid`` (e.g. "S", "Z"), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces; the state follows the last ")".
    return stat.rsplit(")", 1)[1].split()[0]


def _yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(value)


def _kubeconfig_text(
    server: str, ca_pem: bytes, user: str, credentials: dict[str, str], namespace: str | None
) -> str:
    b64 = base64.b64encode(ca_pem).decode()
    ns_line = f"\n    namespace: {_yaml_str(namespace)}" if namespace else ""
    creds = "".join(f"\n    {key}: {_yaml_str(value)}" for key, value in credentials.items())
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  cluster:\n"
        f"    server: {_yaml_str(server)}\n"
        f"    certificate-authority-data: {b64}\n"
        "users:\n"
        f"- name: {_yaml_str(user)}\n"
        f"  user:{creds}\n"
        "contexts:\n"
        f"- name: {CLUSTER_NAME}\n"
        "  context:\n"
        f"    cluster: {CLUSTER_NAME}\n"
        f"    user: {_yaml_str(user)}{ns_line}\n"
        f"current-context: {CLUSTER_NAME}\n"
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def resolve_bin_dir() -> Path:
    """``$ALIASROLL_CLUSTER_BIN_DIR`` or the directory printed by localenv/build.sh (builds on first use)."""
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        bin_dir = Path(override)
    else:
        # stderr goes straight through: the first build takes long and reports its progress there.
        result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode != 0:
            raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise ClusterError(f"{BUILD_SCRIPT} printed no binary directory")
        bin_dir = Path(lines[-1])
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ClusterError(f"binary dir {bin_dir} lacks executables: {', '.join(missing)}")
    return bin_dir


# --------------------------------------------------------------------------------------------- cluster


class LocalCluster:
    """One local control plane, living in ``state_dir``.

    Constructing it is cheap and starts nothing. ``start()`` brings everything up and returns once the
    fake node is Ready; ``stop()`` stops the processes (by their saved PIDs) and removes the state dir.
    An object made for a state dir whose cluster is already running (``is_running()``), e.g. one started
    by ``localcluster.py up``, can use ``kubectl()`` and friends, and ``stop()`` it, without ``start()``.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        bin_dir: Path | str | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.state_dir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR).absolute()
        self._bin_dir = Path(bin_dir).absolute() if bin_dir is not None else None
        self.start_timeout = start_timeout
        self.node_name = NODE_NAME
        self.startup_seconds: float | None = None
        #: Seconds from start() until each readiness step held (filled by start()).
        self.phase_seconds: dict[str, float] = {}
        self._started_at = 0.0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ports: _Ports | None = None

    # ------------------------------------------------------------------------------------ paths & state

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig; used by kubectl, the controllers and kwok alike."""
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _update_state(self, **values: Any) -> None:
        state = self._state()
        state.update(values)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    @property
    def server(self) -> str:
        """The kube-apiserver URL, e.g. ``https://127.0.0.1:41234``."""
        if self._ports is not None:
            return f"https://127.0.0.1:{self._ports.apiserver}"
        server = self._state().get("server")
        if not isinstance(server, str):
            raise ClusterError(f"no cluster state in {self.state_dir} (not started?)")
        return server

    @property
    def bin_dir(self) -> Path:
        """Directory with the built binaries (resolved on first use, see ``resolve_bin_dir``)."""
        if self._bin_dir is None:
            recorded = self._state().get("bin_dir")
            if isinstance(recorded, str) and os.access(Path(recorded) / "kubectl", os.X_OK):
                self._bin_dir = Path(recorded)
            else:
                self._bin_dir = resolve_bin_dir()
        return self._bin_dir

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def _pid_file(self, component: str) -> Path:
        return self.pids_dir / f"{component}.pid"

    def _saved_pid(self, component: str) -> int | None:
        try:
            return int(self._pid_file(component).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

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
        text = _kubeconfig_text(
            self.server, self.ca_file.read_bytes(), "token-user", {"token": token}, namespace
        )
        _write_private(path, text)
        return path

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every component's log, for printing when a test fails."""
        parts = []
        for component in COMPONENTS:
            path = self.log_file(component)
            parts.append(f"===== {component} ({path}, last {lines} lines) =====\n{_tail(path, lines)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------ health

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        # What Python 3.13 enforces by default; passing here proves the certificates suit strict clients.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _api_get(self, path: str, ctx: ssl.SSLContext, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of an admin GET on the apiserver; (0, b"") when it cannot be reached."""
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            with e:
                return int(e.code), bytes(e.read())
        except (OSError, http.client.HTTPException):
            return 0, b""

    def _alive(self, component: str) -> bool:
        proc = self._procs.get(component)
        if proc is not None:
            return proc.poll() is None
        pid = self._saved_pid(component)
        return pid is not None and self._owned(component, pid)

    def _owned(self, component: str, pid: int) -> bool:
        """Whether ``pid`` is a live (non-zombie) ``component`` process started for this state dir."""
        state = _process_state(pid)
        if state is None or state in ("Z", "X"):
            return False
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        marker = f"{_OWNER_ENV}={self.state_dir}".encode()
        return Path(argv0).name == component and marker in environ

    def component_status(self) -> dict[str, int | None]:
        """PID of each component, or None when it is not running."""
        return {c: (self._saved_pid(c) if self._alive(c) else None) for c in COMPONENTS}

    def is_running(self) -> bool:
        """All components alive (by saved PID) and the apiserver answering /readyz."""
        if not self._state_file.exists() or not all(self._alive(c) for c in COMPONENTS):
            return False
        try:
            ctx = self._ssl_context()
        except (OSError, ssl.SSLError):
            return False
        status, body = self._api_get("/readyz", ctx, timeout=3.0)
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
        """Start the control plane and wait until the fake node is Ready.

        Leftovers of an earlier, dead cluster in the state dir are cleaned up first; a cluster that
        still runs there is an error (stop it, or use it without starting). On failure every process
        started so far is stopped, the logs stay in the state dir and ClusterError carries the failing
        component's log tail.
        """
        started = self._started_at = time.monotonic()
        self.phase_seconds = {}
        if self.is_running():
            raise ClusterError(f"a cluster is already running in {self.state_dir}")
        # Always ask build.sh (a ~2 s no-op when cached) so that a bumped pin is rebuilt before use.
        bin_dir = self._bin_dir = self._bin_dir or resolve_bin_dir()
        self._prepare_state_dir()
        try:
            self._start(bin_dir, started)
        except BaseException:
            self._terminate_all()
            self._remove_etcd_data()
            raise
        self.startup_seconds = time.monotonic() - started
        self._update_state(startup_seconds=round(self.startup_seconds, 2), phase_seconds=self.phase_seconds)

    def _prepare_state_dir(self) -> None:
        d = self.state_dir
        if d.exists() and any(d.iterdir()):
            if not (d / _MARKER).exists():
                raise ClusterError(
                    f"{d} is not empty and was not made by localcluster.py; refusing to use it"
                )
            self._terminate_all()  # processes of a dead or half-dead earlier run
            self._remove_etcd_data()
            for child in d.iterdir():
                if child.name == _MARKER:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        d.mkdir(parents=True, exist_ok=True)
        (d / _MARKER).write_text("state dir of localenv/localcluster.py; `localcluster.py down` removes it\n")
        for sub in (self.pki_dir, self.logs_dir, self.pids_dir):
            sub.mkdir(parents=True, exist_ok=True)

    def _start(self, bin_dir: Path, started: float) -> None:
        deadline = started + self.start_timeout
        ports = _Ports(*_free_ports(4))
        self._ports = ports
        etcd_data = self._make_etcd_data_dir()
        self._update_state(
            server=self.server,
            bin_dir=str(bin_dir),
            etcd_data_dir=str(etcd_data),
            ports={
                "etcd": ports.etcd,
                "apiserver": ports.apiserver,
                "kube-controller-manager": ports.controller_manager,
                "kube-scheduler": ports.scheduler,
            },
            node=self.node_name,
        )
        self._make_pki()
        self.phase_seconds["certificates made"] = round(time.monotonic() - self._started_at, 2)
        admin_creds = {
            "client-certificate-data": base64.b64encode((self.pki_dir / "admin.crt").read_bytes()).decode(),
            "client-key-data": base64.b64encode((self.pki_dir / "admin.key").read_bytes()).decode(),
        }
        _write_private(
            self.kubeconfig,
            _kubeconfig_text(self.server, self.ca_file.read_bytes(), "admin", admin_creds, None),
        )
        ctx = self._ssl_context()
        pki = self.pki_dir
        kubeconfig = str(self.kubeconfig)

        etcd_url = f"http://127.0.0.1:{ports.etcd}"
        self._spawn(
            bin_dir,
            "etcd",
            [
                "--name=aliasroll",
                f"--data-dir={etcd_data}",
                "--unsafe-no-fsync=true",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                "--listen-peer-urls=http://127.0.0.1:0",
                "--initial-advertise-peer-urls=http://127.0.0.1:0",
                "--initial-cluster=aliasroll=http://127.0.0.1:0",
                "--initial-cluster-state=new",
            ],
        )

        def etcd_healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{etcd_url}/health", timeout=2.0) as resp:
                    return bool(json.loads(resp.read()).get("health") == "true")
            except (OSError, ValueError, http.client.HTTPException):
                return False

        self._wait("etcd healthy", etcd_healthy, deadline, ["etcd"])

        self._spawn(
            bin_dir,
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
            ],
        )

        def apiserver_ready() -> bool:
            status, body = self._api_get("/readyz", ctx)
            return (
                status == 200
                and body.strip() == b"ok"
                and self._api_get("/api/v1/namespaces/default", ctx)[0] == 200
            )

        self._wait("kube-apiserver ready", apiserver_ready, deadline, ["etcd", "kube-apiserver"])

        common = [
            f"--kubeconfig={kubeconfig}",
            # No --authentication/authorization-kubeconfig: the health paths need neither, and without
            # an apiserver --requestheader-client-ca-file they only fill the logs with errors.
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez",
        ]
        self._spawn(
            bin_dir,
            "kube-controller-manager",
            [
                *common,
                f"--secure-port={ports.controller_manager}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        self._spawn(bin_dir, "kube-scheduler", [*common, f"--secure-port={ports.scheduler}"])
        stages = sorted(
            f
            for sub in KWOK_STAGE_DIRS
            for f in (bin_dir / "kwok-stages" / sub).glob("*.yaml")
            if f.name != "kustomization.yaml"
        )
        if not stages:
            raise ClusterError(f"no kwok stage files under {bin_dir / 'kwok-stages'}")
        stages = [self._with_ready_delay(f) if f.name == "pod-ready.yaml" else f for f in stages]
        self._spawn(
            bin_dir,
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                # Without a KwokConfiguration file this defaults to 0: no node Lease, so the node-lifecycle
                # controller would mark the node NotReady (and its pods not Ready) every grace period.
                "--node-lease-duration-seconds=40",
                *(f"--config={f}" for f in stages),
            ],
        )
        self.kubectl("create", "-f", "-", input=json.dumps(self._node_manifest()))

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs generated in memory

        def healthz(port: int) -> Callable[[], bool]:
            def check() -> bool:
                try:
                    with urllib.request.urlopen(
                        f"https://127.0.0.1:{port}/healthz", context=insecure, timeout=2.0
                    ) as resp:
                        return bool(resp.read().strip() == b"ok")
                except (OSError, http.client.HTTPException):
                    return False

            return check

        def node_ready() -> bool:
            status, body = self._api_get(f"/api/v1/nodes/{self.node_name}", ctx)
            if status != 200:
                return False
            node = json.loads(body)
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            tainted = any(
                t.get("key", "").startswith("node.kubernetes.io/")
                for t in node.get("spec", {}).get("taints", [])
            )
            lease = self._api_get(
                f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}", ctx
            )
            return ready and not tainted and lease[0] == 200

        def default_service_account() -> bool:
            return self._api_get("/api/v1/namespaces/default/serviceaccounts/default", ctx)[0] == 200

        everything = list(COMPONENTS)
        self._wait("kube-controller-manager healthy", healthz(ports.controller_manager), deadline, everything)
        self._wait("kube-scheduler healthy", healthz(ports.scheduler), deadline, everything)
        self._wait("default ServiceAccount created", default_service_account, deadline, everything)
        self._wait(f"node {self.node_name} Ready, untainted, with a Lease", node_ready, deadline, everything)

    def _with_ready_delay(self, stage: Path) -> Path:
        """kwok's pod-ready stage, delayed by the pod's READY_DELAY_ANNOTATION when it has one."""
        text = stage.read_text()
        anchor = "\nspec:\n"
        if anchor not in text:
            raise ClusterError(f"{stage}: no top-level spec to add a delay to")
        delay = (
            "  delay:\n"
            "    durationMilliseconds: 0\n"
            "    durationFrom:\n"
            "      jq:\n"
            f"        expression: '.metadata.annotations[\"{READY_DELAY_ANNOTATION}\"]'\n"
        )
        delayed = self.state_dir / "kwok-pod-ready.yaml"
        delayed.write_text(text.replace(anchor, anchor + delay, 1))
        return delayed

    def _make_etcd_data_dir(self) -> Path:
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.state_dir
        return Path(tempfile.mkdtemp(prefix="aliasroll-etcd-", dir=base))

    def _make_pki(self) -> None:
        pki = self.pki_dir
        (pki / "openssl.cnf").write_text(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
            "[ca]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
            "[server]\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
            "subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes.default.svc, "
            "DNS:kubernetes.default, DNS:kubernetes\n"
            "[client]\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature\n"
            "extendedKeyUsage = clientAuth\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid:always\n"
        )
        days = "3650"
        # ECDSA P-256 for the TLS keys (instant); RSA for the service-account signing key.
        for name in ("ca", "apiserver", "admin"):
            _openssl(
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                f"{name}.key",
                cwd=pki,
            )
        _openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=aliasroll-local-ca",
            "-days",
            days,
            "-sha256",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
            "-out",
            "ca.crt",
            cwd=pki,
        )
        for name, subject, section in (
            ("apiserver", "/CN=kube-apiserver", "server"),
            ("admin", "/O=system:masters/CN=admin", "client"),
        ):
            _openssl(
                "req",
                "-new",
                "-key",
                f"{name}.key",
                "-subj",
                subject,
                "-config",
                "openssl.cnf",
                "-out",
                f"{name}.csr",
                cwd=pki,
            )
            _openssl(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                f"0x{secrets.token_hex(16)}",
                "-days",
                days,
                "-sha256",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                section,
                "-out",
                f"{name}.crt",
                cwd=pki,
            )
        _openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki
        )
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        for key in pki.glob("*.key"):
            key.chmod(0o600)

    def _node_manifest(self) -> dict[str, Any]:
        resources = {"cpu": "32", "memory": "256Gi", "pods": "250"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "spec": {},
            "status": {
                "allocatable": resources,
                "capacity": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                },
                "phase": "Running",
            },
        }

    def _spawn(self, bin_dir: Path, component: str, args: Sequence[str]) -> None:
        env = dict(os.environ)
        env[_OWNER_ENV] = str(self.state_dir)
        env.pop("KUBECONFIG", None)
        with self.log_file(component).open("ab") as log:
            proc = subprocess.Popen(
                [str(bin_dir / component), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=env,
                start_new_session=True,
            )
        self._procs[component] = proc
        self._pid_file(component).write_text(f"{proc.pid}\n")

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, watch: Sequence[str]) -> None:
        """Poll ``check`` until it holds; fail early when a watched component exits, or at the deadline."""
        delay = 0.05
        while True:
            for component in watch:
                if not self._alive(component):
                    proc = self._procs.get(component)
                    code = f" with exit code {proc.returncode}" if proc is not None else ""
                    raise ClusterError(
                        f"{component} exited{code} while waiting for {what}; "
                        f"{self.log_file(component)} ends with:\n{_tail(self.log_file(component), 40)}"
                    )
            if check():
                self.phase_seconds[what] = round(time.monotonic() - self._started_at, 2)
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- {c} ({self.log_file(c)}):\n{_tail(self.log_file(c), 40)}" for c in watch
                )
                raise ClusterError(f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{tails}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop every component (saved PIDs: SIGTERM, wait, SIGKILL) and remove the state dir."""
        self._terminate_all()
        self._remove_etcd_data()
        if (self.state_dir / _MARKER).exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._ports = None

    def _terminate_all(self, grace: float = 15.0) -> None:
        # Clients first, etcd last: a kube-apiserver whose etcd is gone takes ~10 s to shut down.
        leftovers = {**self._terminate(COMPONENTS[1:], grace), **self._terminate(COMPONENTS[:1], grace)}
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)  # reap our children
        self._procs.clear()
        if leftovers:
            raise ClusterError(f"could not stop {', '.join(f'{c} (pid {p})' for c, p in leftovers.items())}")
        for component in COMPONENTS:
            self._pid_file(component).unlink(missing_ok=True)

    def _terminate(self, components: Sequence[str], grace: float) -> dict[str, int]:
        """SIGTERM, wait up to ``grace`` s, SIGKILL; returns the components still alive after all that."""
        targets: dict[str, int] = {}
        for component in components:
            proc = self._procs.get(component)
            pid = proc.pid if proc is not None else self._saved_pid(component)
            if pid is not None and self._alive(component):
                targets[component] = pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if not targets:
                break
            for pid in targets.values():
                # Each component leads its own session and process group: signal the whole group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while targets and time.monotonic() < deadline:
                targets = {c: p for c, p in targets.items() if self._alive(c)}
                if targets:
                    time.sleep(0.05)
        return targets

    def _remove_etcd_data(self) -> None:
        etcd_data = self._state().get("etcd_data_dir")
        if isinstance(etcd_data, str) and Path(etcd_data).name.startswith("aliasroll-etcd-"):
            shutil.rmtree(etcd_data, ignore_errors=True)

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
        self.kubectl(
            "wait",
            "-n",
            namespace,
            f"deployment/{name}",
            "--for=condition=Available",
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 30,
        )
        self.kubectl(
            "wait",
            "-n",
            namespace,
            f"deployment/{name}",
            "--for=jsonpath={.status.availableReplicas}=2",
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 30,
        )
        timings["available"] = time.monotonic() - t
        pods = self.kubectl("get", "pods", "-n", namespace, "-l", f"app={name}", "-o", "json").stdout
        items = json.loads(pods)["items"]
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


# --------------------------------------------------------------------------------------------- CLI


def _print_usage(cluster: LocalCluster) -> None:
    print(f"kubeconfig: {cluster.kubeconfig}")
    print(f"server:     {cluster.server}")
    print("use it with:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  export PATH={cluster.bin_dir}:$PATH   # the built kubectl")
    print("  kubectl get nodes")
    print(
        f"stop it with: python {Path(__file__).resolve().relative_to(REPO_ROOT)} down"
        + ("" if cluster.state_dir == DEFAULT_STATE_DIR else f" --dir {cluster.state_dir}")
    )


def _cmd_up(cluster: LocalCluster) -> int:
    if cluster.is_running():
        print(f"already running (state in {cluster.state_dir})")
        print(f"kubeconfig: {cluster.kubeconfig}")
        return 0
    cluster.start()
    print(f"cluster up in {cluster.startup_seconds:.1f} s (state in {cluster.state_dir})")
    print("  " + ", ".join(f"{what} at {t:.1f} s" for what, t in cluster.phase_seconds.items()))
    _print_usage(cluster)
    return 0


def _cmd_down(cluster: LocalCluster) -> int:
    if not cluster.state_dir.exists():
        print(f"no cluster in {cluster.state_dir}")
        return 0
    t = time.monotonic()
    cluster.stop()
    if cluster.state_dir.exists():
        print(f"{cluster.state_dir} was not made by localcluster.py: stopped nothing, removed nothing")
        return 1
    print(f"stopped and removed {cluster.state_dir} in {time.monotonic() - t:.1f} s")
    return 0


def _cmd_status(cluster: LocalCluster) -> int:
    if not cluster.state_dir.exists():
        print(f"not running (no state in {cluster.state_dir})")
        return 1
    pids = cluster.component_status()
    running = cluster.is_running()
    print(f"{'running' if running else 'NOT healthy'} (state in {cluster.state_dir})")
    for component, pid in pids.items():
        print(f"  {component:24} {'pid ' + str(pid) if pid else 'not running'}")
    if running:
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"server:     {cluster.server}")
    else:
        print(f"logs in {cluster.logs_dir}; restart with `up` (it cleans up) or remove with `down`")
    return 0 if running else 1


def _require_running(cluster: LocalCluster) -> None:
    if not cluster.is_running():
        raise ClusterError(f"no healthy cluster in {cluster.state_dir}; run `up` first")


def _cmd_selftest(cluster: LocalCluster) -> int:
    _require_running(cluster)
    timings = cluster.selftest()
    print(
        f"selftest passed: 2/2 replicas Available after {timings['available']:.1f} s; "
        f"pods garbage-collected {timings['garbage_collected']:.1f} s after deleting the Deployment"
    )
    return 0


def _cmd_gateway_crds(cluster: LocalCluster) -> int:
    _require_running(cluster)
    t = time.monotonic()
    cluster.install_gateway_api_crds()
    print(f"Gateway API standard CRDs installed and served in {time.monotonic() - t:.1f} s")
    return 0


def _cmd_kubectl_path(cluster: LocalCluster) -> int:
    print(cluster.bin_dir / "kubectl")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", type=Path, default=DEFAULT_STATE_DIR, help=f"state dir (default: {DEFAULT_STATE_DIR})"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[LocalCluster], int]] = {
        "up": _cmd_up,
        "down": _cmd_down,
        "status": _cmd_status,
        "selftest": _cmd_selftest,
        "gateway-crds": _cmd_gateway_crds,
        "kubectl-path": _cmd_kubectl_path,
    }
    helps = {
        "up": "start the cluster in the background and wait until it is ready",
        "down": "stop the cluster and remove its state dir",
        "status": "report whether the cluster runs (exit code 0) or not (1)",
        "selftest": "prove that a Deployment becomes Available and is garbage-collected",
        "gateway-crds": "install the Gateway API standard CRDs",
        "kubectl-path": "print the path of the built kubectl (builds it first if needed; no cluster needed)",
    }
    for name in commands:
        sub.add_parser(name, parents=[common], help=helps[name])
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir)
    try:
        return commands[args.command](cluster)
    except (ClusterError, KubectlError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (whatever was started has been stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
