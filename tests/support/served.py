"""The model server as a process, started as the image starts it (`python -m aliasroll.serving`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from mlflowserver import free_port

# What the server answers on its admin port only (ADMIN_PORT): the serving port, where clients go,
# answers them 404.
ADMIN_PATHS = frozenset({"/ready", "/live", "/metrics", "/version"})


class ServedProcess:
    def __init__(
        self,
        *,
        model_uri: str,
        tracking_uri: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        while self.admin_port == self.port:
            self.admin_port = free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        # A port can come round again within one module's workdir: each server gets a directory of its own.
        workdir.mkdir(parents=True, exist_ok=True)
        own = Path(tempfile.mkdtemp(dir=workdir, prefix=f"server-{self.port}-"))
        self.log_path = own / "server.log"
        scratch = own / "scratch"
        scratch.mkdir()
        self.env = {
            **os.environ,
            "MODEL_URI": model_uri,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PORT": str(self.port),
            "ADMIN_PORT": str(self.admin_port),
            "SCRATCH_DIR": str(scratch),
            **(env or {}),
        }
        self.command = command or [sys.executable, "-m", "aliasroll.serving"]
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self) -> ServedProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def url_of(self, path: str) -> str:
        """`path` on the port that serves it: the admin port for ADMIN_PATHS, else the serving port."""
        return (self.admin_url if path in ADMIN_PATHS else self.url) + path

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url_of(path), timeout=10)

    def wait_until(self, path: str, *, status: int = 200, timeout: float = 120) -> requests.Response:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                answer = self.session.get(self.url_of(path), timeout=2)
                if answer.status_code == status:
                    return answer
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never answered {status}:\n{self.log()}")
            time.sleep(0.02)

    def post(
        self, body: Any, *, content_type: str = "application/json", raw: bytes | None = None
    ) -> requests.Response:
        import json

        data = raw if raw is not None else (body if isinstance(body, str | bytes) else json.dumps(body))
        return self.session.post(
            self.url + "/invocations", data=data, headers={"Content-Type": content_type}, timeout=30
        )

    def wait_exit(self, timeout: float = 120) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.session.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
