"""What every part of the local cluster shares: paths, errors, small file and process helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".work" / "cluster"
CLI_PATH = "localenv/localcluster.py"


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


def free_ports(count: int) -> list[int]:
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


def tail(path: Path, lines: int) -> str:
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


def yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(value)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (keys, kubeconfigs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def run_checked(argv: list[str], *, what: str, timeout: float = 60.0) -> str:
    """Run a short helper command (ip, openssl, ctr, ...); its stdout, or ClusterError with its stderr."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"{what}: {' '.join(argv)} failed: {e}") from e
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise ClusterError(f"{what}: {' '.join(argv)} exited {result.returncode}:\n{output}")
    return result.stdout


def poll(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it holds, or raise ClusterError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
