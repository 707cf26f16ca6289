"""A real Prometheus server in a subprocess, for the canary analysis' tests.

The binary is built from source by ``localenv/build.sh prometheus`` (pinned in localenv/go/prometheus,
cached under ~/.cache/aliasroll/bin) or taken from ``$ALIASROLL_PROMETHEUS``. The server scrapes the
given targets with static_configs, keeps its data in a directory of its own (removed on stop), and
listens on a free port of 127.0.0.1. Usable as a context manager:

    with PrometheusServer(targets=["127.0.0.1:8080"]) as prometheus:
        ... prometheus.url ...
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import requests
import yaml

from mlflowserver import PortInUseError, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "localenv" / "build.sh"
BINARY_ENV = "ALIASROLL_PROMETHEUS"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def prometheus_binary() -> Path:
    """``$ALIASROLL_PROMETHEUS``, or what ``localenv/build.sh prometheus`` built (once, then cached)."""
    override = os.environ.get(BINARY_ENV)
    if override:
        binary = Path(override)
    else:
        # stderr goes straight through: a first build takes minutes and reports its progress there.
        result = subprocess.run(
            [str(BUILD_SCRIPT), "prometheus"], stdout=subprocess.PIPE, text=True, check=False
        )
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if result.returncode != 0 or not lines:
            raise RuntimeError(f"{BUILD_SCRIPT} prometheus failed with exit code {result.returncode}")
        binary = Path(lines[-1]) / "prometheus"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not executable: set ${BINARY_ENV} or run make prometheus")
    return binary


class PrometheusServer:
    """Prometheus on 127.0.0.1 scraping ``targets`` (host:port, path /metrics) every ``scrape_interval``."""

    def __init__(
        self,
        *,
        targets: Sequence[str],
        labels: Mapping[str, str] | None = None,
        scrape_interval: str = "1s",
        job: str = "serving",
        binary: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.targets = list(targets)
        self.labels = dict(labels or {})
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has no port before start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "prometheus.log" if self.workdir else None

    def start(self) -> Self:
        binary = self.binary or prometheus_binary()
        self.workdir = Path(tempfile.mkdtemp(prefix="aliasroll-prometheus-"))
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        for attempt in range(3):
            self.port = free_port()
            try:
                self._launch(binary, config)
                return self
            except PortInUseError:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        """SIGTERM, SIGKILL after the deadline, then remove the data directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query's result list (for tests that look at what the server holds)."""
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        result: list[dict[str, object]] = answer.json()["data"]["result"]
        return result

    def wait_scraped(self, *, after: float, timeout: float = 30.0) -> None:
        """Until every target has been scraped successfully at or after ``after`` (a time.time())."""
        deadline = time.monotonic() + timeout
        while True:
            answer = requests.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=10)
            targets = answer.json()["data"]["activeTargets"]
            if targets and all(_scraped_after(target, after) for target in targets):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not scrape every target after {after}: {targets}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return "".join(deque(log, maxlen=lines))

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _config(self) -> dict[str, object]:
        static: dict[str, object] = {"targets": self.targets}
        if self.labels:
            static["labels"] = self.labels
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": self.job, "static_configs": [static]}],
        }

    def _launch(self, binary: Path, config: Path) -> None:
        assert self.workdir is not None
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        with requests.Session() as session:
            while True:
                if self._process.poll() is not None:
                    tail = self.log_tail()
                    code = self._process.returncode
                    self._process = None
                    if "address already in use" in tail:
                        raise PortInUseError(f"prometheus could not bind port {self.port}")
                    raise RuntimeError(f"prometheus exited with {code} before it was ready:\n{tail}")
                with contextlib.suppress(requests.RequestException):
                    if session.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    raise RuntimeError(f"prometheus was not ready after {self.startup_timeout:g} s:\n{tail}")
                time.sleep(0.1)


def _scraped_after(target: Mapping[str, object], after: float) -> bool:
    from datetime import datetime

    last = str(target.get("lastScrape", ""))
    if target.get("health") != "up" or not last or last.startswith("0001-"):
        return False
    return datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() >= after
