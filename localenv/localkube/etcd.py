"""etcd: one member on a free loopback port, its data on tmpfs and never fsynced (tests only)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

_DATA_PREFIX = "aliasroll-etcd-"


def make_data_dir(state_dir: Path) -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else state_dir
    return Path(tempfile.mkdtemp(prefix=_DATA_PREFIX, dir=base))


def remove_data_dir(path: object) -> None:
    """Remove a data dir recorded in the state (only one this module made)."""
    if isinstance(path, str) and Path(path).name.startswith(_DATA_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def args(*, data_dir: Path, port: int) -> list[str]:
    client = url(port)
    return [
        "--name=aliasroll",
        f"--data-dir={data_dir}",
        "--unsafe-no-fsync=true",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        "--listen-peer-urls=http://127.0.0.1:0",
        "--initial-advertise-peer-urls=http://127.0.0.1:0",
        "--initial-cluster=aliasroll=http://127.0.0.1:0",
        "--initial-cluster-state=new",
    ]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url(port)}/health", timeout=2.0) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError, http.client.HTTPException):
        return False
