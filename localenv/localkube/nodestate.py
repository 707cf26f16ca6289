"""The real node's recorded state: every name it uses (chosen by ``RealNode.plan``), the processes it
started (its components, in start order), the images loaded and the kernel settings held, all in
``state.json`` under ``real_node``. Each is recorded before it is created, so ``stop()`` also cleans
up after a start that failed half-way, and from another process (``localcluster.py down``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import ClusterError
from .state import State


def run_dir_for(node_id: str) -> Path:
    """Sockets and containerd's state: short paths (Unix socket paths are limited to 107 bytes)."""
    return Path(f"/run/aliasroll-{node_id}")


def node_alive(node_id: str) -> bool:
    """A real node of this machine (this one or another) still has its run dir: stop() removes it last."""
    return run_dir_for(node_id).is_dir()


class NodeRecord:
    """The ``real_node`` entry of one cluster's state file, read afresh on every access."""

    def __init__(self, state: State) -> None:
        self._state = state

    @property
    def path(self) -> Path:
        return self._state.path

    def info(self) -> dict[str, Any]:
        info = self._state.get("real_node")
        return info if isinstance(info, dict) else {}

    def update(self, **values: Any) -> None:
        self._state.update(real_node={**self.info(), **values})

    def fact(self, key: str) -> str:
        """A name ``plan`` recorded; a ClusterError when it is missing."""
        value = self.info().get(key)
        if not isinstance(value, str):
            raise ClusterError(f"the real node's {key} is not recorded in {self.path}")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.fact("run_dir"))

    @property
    def bin_dir(self) -> Path:
        return Path(self.fact("bin_dir"))

    @property
    def images(self) -> dict[str, str]:
        recorded = self.info().get("images")
        return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}

    @property
    def components(self) -> list[str]:
        recorded = self.info().get("components")
        return [str(c) for c in recorded] if isinstance(recorded, list) else []

    def add_component(self, name: str) -> None:
        if name not in self.components:
            self.update(components=[*self.components, name])

    def remove_component(self, name: str) -> None:
        self.update(components=[c for c in self.components if c != name])

    def mark_stopped(self, info: dict[str, Any]) -> None:
        """``info`` (as read before teardown) marked stopped: everything it names is gone."""
        self._state.update(real_node={**info, "stopped": True})
