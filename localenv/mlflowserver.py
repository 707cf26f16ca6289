"""A real ``mlflow server`` in a subprocess, for integration and end-to-end tests.

Set up to be cheap and quick to answer: one uvicorn worker (with more, requests after the first on a
kept-alive connection wait ~40 ms extra), no job runner (MLflow's huey consumers cost ~230 MB each),
SQLite and proxied artifacts (``mlflow-artifacts:/``) in one data directory, so a client needs only
MLFLOW_TRACKING_URI. Restartable on the same port and data, for tests that take the registry down.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import requests

STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0

# uvicorn's line once it has bound the port (compared lower-cased).
_LISTENING = "uvicorn running on"
# uvicorn's access log line, as MLflow's uvicorn_log_config.yaml formats it:
#   2026/01/01 10:00:00 INFO:     127.0.0.1:5555 - "GET /api/2.0/mlflow/... HTTP/1.1" 200 OK
_ACCESS_LINE = re.compile(r' - "(?P<request>[A-Z]+ \S+ HTTP/[\d.]+)" \d{3}\b')


#: Where free_port looks: below the kernel's ephemeral range (32768-60999), where no outgoing
#: connection takes a local port, and below the NodePort range (30000-32767). A port the kernel hands
#: out (bind to 0) is one of the ephemeral ones, which a client connection of any process on this
#: busy machine may take before the server binds it: servers then failed with "address already in use".
PORTS = range(20000, 30000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, nor is likely to take before the caller binds it (see PORTS)."""
    hosts = {host, "0.0.0.0"} if host.startswith("127.") else {host}
    for _ in range(200):
        port = random.choice(PORTS)
        try:
            for address in hosts:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} on {host}")


def _mlflow_command() -> list[str]:
    # The mlflow of the running interpreter's environment, not whatever is first on PATH.
    script = Path(sys.executable).parent / "mlflow"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "mlflow"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def count_requests(log_path: str | Path, path_fragment: str) -> int:
    """How many requests in the server's access log have ``path_fragment`` in their request line.

    The request line is ``METHOD PATH?QUERY HTTP/1.1``, so a fragment may start with the method:
    ``count_requests(log, "GET /api/2.0/mlflow/registered-models/get?")``. Matching is by substring:
    end the fragment with ``?`` to keep ``.../get`` from also counting ``.../get-latest-versions``.
    uvicorn writes each line before the response body goes out, so a request that has been answered
    is already counted.
    """
    count = 0
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _ACCESS_LINE.search(line)
            if match is not None and path_fragment in match.group("request"):
                count += 1
    return count


class PortInUseError(RuntimeError):
    """The server could not bind its port (only a restart, or a start with an explicit port, raises it)."""


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with SQLite and artifacts under ``data_dir``.

    ``start()`` picks a free port the first time and keeps it across restarts; ``stop()`` signals the
    saved PID (SIGTERM, then SIGKILL to its process group after ``stop_timeout``). Usable as a context
    manager: ``with MlflowServer(tmp_path) as server: ... server.url ...``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        log_path: str | Path | None = None,
        host: str = "127.0.0.1",
        job_execution: bool = False,
        extra_env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.log_path = (
            Path(log_path).resolve() if log_path is not None else self.data_dir / "mlflow-server.log"
        )
        self.job_execution = job_execution
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)  # e.g. ["--app-name", "basic-auth"]
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        # The server has its own session, so nothing else ends it if the tests exit without teardown
        # (an uncaught error, a KeyboardInterrupt). A hard kill of the test process still orphans it.
        atexit.register(self.stop)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has no port before its first start()")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the ``mlflow server`` process (also its process group: it has its own session)."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (stopping it first if running) and wait until ``/health`` answers."""
        self.stop()
        first_start = self._port is None
        for attempt in range(3):
            if self._port is None:
                self._port = free_port(self.host)
            try:
                self._launch_and_wait()
                return
            except PortInUseError:
                # Another process took the port between free_port() and the bind; only a first start
                # may move to another port, a restart must keep the URL clients already have.
                if not first_start or attempt == 2:
                    raise
                self._port = None

    def keep_running_after_exit(self) -> None:
        """Leave the server up when this process exits (the demo hands it to the user)."""
        atexit.unregister(self.stop)

    def stop(self) -> None:
        """SIGTERM the saved PID (mlflow forwards it to uvicorn), then SIGKILL its group after the
        deadline. Also ends anything left in the group (uvicorn or job runners that outlived it)."""
        process = self._process
        if process is None:
            return
        pgid = process.pid  # start_new_session=True: the server leads its own process group.
        deadline = time.monotonic() + self.stop_timeout
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if process.poll() is None or _group_alive(pgid):
            if process.poll() is None:
                # mlflow did not exit in time: nothing left to be graceful for.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            else:
                # mlflow exited but left children behind: give them the same deadline.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                while _group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            process.wait()
            # Killed processes free their port only once gone; don't return while any is still there.
            kill_deadline = time.monotonic() + 10.0
            while _group_alive(pgid) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
        self._process = None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log (stdout and stderr together)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return ""

    def count_requests(self, path_fragment: str) -> int:
        return count_requests(self.log_path, path_fragment)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        return [
            *_mlflow_command(),
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.data_dir / "artifacts"),
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Point nothing in the server back at some other tracking server.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(
            {
                # The job runner and its huey consumers: separate processes, ~230 MB each.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if self.job_execution else "false",
                # Webhooks to test receivers on 127.0.0.1 over plain http.
                "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                # Fixed per data dir: webhook secrets stored before a restart must still decrypt after it.
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": self._webhook_key(),
                # Log lines reach the file as they happen, so count_requests() sees answered requests.
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _webhook_key(self) -> str:
        key_file = self.data_dir / "webhook-encryption.key"
        if not key_file.exists():
            # A Fernet key is 32 random bytes, url-safe base64.
            key_file.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        return key_file.read_text().strip()

    def _launch_and_wait(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        # Appended, not truncated: one file holds every run, so request counts span restarts.
        with open(self.log_path, "ab") as log:
            log.write(f"=== aliasroll test: start #{self._starts} on port {self.port} ===\n".encode())
            log.flush()
            log_offset = log.tell()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._wait_healthy(log_offset)

    def _wait_healthy(self, log_offset: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with requests.Session() as session:
            while True:
                process = self._process
                assert process is not None
                if process.poll() is not None:
                    port_taken = self._log_since(log_offset, "address already in use")
                    tail = self.log_tail()
                    self.stop()  # reaps it and ends anything it left in its group
                    message = f"mlflow server exited with {process.returncode} before answering /health"
                    if port_taken:
                        raise PortInUseError(f"{message}: port {self.port} in use\n{tail}")
                    raise RuntimeError(f"{message}; log {self.log_path} ends with:\n{tail}")
                # Our uvicorn must say it listens: a /health answer alone could come from another
                # process that took the port, while ours is still importing (~20 s).
                if self._log_since(log_offset, _LISTENING):
                    with contextlib.suppress(requests.RequestException):
                        if session.get(f"{self.url}/health", timeout=2).status_code == 200:
                            return
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise TimeoutError(
                        f"mlflow server did not answer {self.url}/health within "
                        f"{self.startup_timeout:.0f} s; log {self.log_path} ends with:\n{tail}"
                    )
                time.sleep(0.25)

    def _log_since(self, offset: int, needle: str) -> bool:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return needle.encode() in log.read().lower()


__all__ = ["MlflowServer", "PortInUseError", "count_requests"]
