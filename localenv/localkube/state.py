"""The state dir of one local cluster and its ``state.json`` (ports, paths, names to clean up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Written into the state dir by start(); down() only ever deletes a directory that carries it.
MARKER = ".aliasroll-localcluster"


class State:
    """``state.json`` in the state dir: written as things are created, read by later commands."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def path(self) -> Path:
        return self.state_dir / "state.json"

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Any:
        return self.read().get(key)

    def update(self, **values: Any) -> None:
        state = self.read()
        state.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.path)

    def owned(self) -> bool:
        return (self.state_dir / MARKER).exists()

    def mark(self) -> None:
        (self.state_dir / MARKER).write_text(
            "state dir of localenv/localcluster.py; `localcluster.py down` removes it\n"
        )
