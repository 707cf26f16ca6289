"""The operator as users run it, `python -m aliasroll`, as a background process.

Shared by the end-to-end tests, the demo and the rollout benchmark. Started in its own session with
its log in a file; ready once its liveness endpoint answers; stopped by its saved PID.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from mlflowserver import free_port

REPO = Path(__file__).resolve().parents[1]
#: The operator image's Python environment (uv sync --no-dev: mlflow-skinny, no pandas, no tracking
#: server), with this checkout's code: what a measure of the operator's memory must run on.
IMAGE_ENV = REPO / ".work" / "operator-image-env"
#: A local operator's registries and Prometheus run on this machine's loopback (tests, demo, bench),
#: which an operator in a cluster refuses by default (aliasroll.egress): allowed here, on purpose.
LOCAL_OPERATOR_ENV = {"ALIASROLL_ALLOWED_DESTINATIONS": "*,127.0.0.0/8,::1"}
#: Metric samples by (name, sorted label pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class OperatorProcess:
    def __init__(
        self,
        *,
        kubeconfig: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        verbose: bool = False,
        args: Sequence[str] = (),
        netns: str | None = None,
        python: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        # The interpreter to run it with (image_python(): the image's dependencies); None: this one.
        self.python = python or sys.executable
        # Run inside this network namespace (the real node's), where Service and node addresses
        # are reachable as they are from inside a cluster; None: the host's network.
        self.netns = netns
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.extra_args = list(args)  # e.g. ["--namespace", "team-a"]
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, *, timeout: float = 60) -> None:
        """Starts it and waits for its liveness endpoint; raises with the log's tail if it exits."""
        env = {**LOCAL_OPERATOR_ENV, **os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env}
        command = [
            *self._in_netns(),
            self.python,
            "-m",
            "aliasroll",
            f"--liveness=http://127.0.0.1:{self.port}/healthz",
        ]
        if self.verbose:
            command.append("--verbose")
        command.extend(self.extra_args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== operator start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become live in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the operator exited during start:\n{self.log_tail()}")
        url = f"http://127.0.0.1:{self.port}/healthz"
        if self.netns is not None:  # the endpoint listens in the namespace: ask from there
            probe = f"import urllib.request as u; u.urlopen({url!r}, timeout=1)"
            return (
                subprocess.run(
                    [*self._in_netns(), sys.executable, "-c", probe], capture_output=True
                ).returncode
                == 0
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def _in_netns(self) -> list[str]:
        return [] if self.netns is None else ["nsenter", f"--net=/var/run/netns/{self.netns}"]

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()

    def metrics(self, timeout: float = 5.0) -> Samples:
        """Its Prometheus metrics (ALIASROLL_METRICS_LISTEN), by (sample name, sorted labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://{self.extra_env['ALIASROLL_METRICS_LISTEN']}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def image_python() -> str:
    """A Python with exactly the operator image's dependencies (operator/Dockerfile: `uv sync --frozen
    --no-dev`) and this checkout's code (editable), made once per uv.lock under .work. The test
    environment also holds the tracking server, pandas and the rest, which an operator imports when
    they are there (mlflow's entities do): about 80 MiB more resident memory than in the image."""
    lock = hashlib.sha256((REPO / "uv.lock").read_bytes()).hexdigest()[:16]
    stamp = IMAGE_ENV / ".uv-lock"
    python = IMAGE_ENV / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == lock:
        return str(python)
    shutil.rmtree(IMAGE_ENV, ignore_errors=True)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(IMAGE_ENV)}
    subprocess.run([uv, "sync", "--frozen", "--no-dev", "--quiet"], cwd=REPO, env=env, check=True)
    stamp.write_text(lock)
    return str(python)
