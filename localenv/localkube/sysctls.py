"""The machine-wide kernel settings kubelet rewrites when it starts, kept for all the real nodes of a
machine together.

Real nodes may overlap (`make test` runs two real-pod sessions side by side, and a demo may run
beside them): a node that starts while another one's kubelet runs reads kubelet's values, not the
machine's. So the values from before the first node are kept in a ledger with the nodes that hold
them, and written back when the last of those nodes stops, in whatever order they stop. The ledger
lives in /run (gone at reboot, as the settings' changes are), read and written under an flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
LEDGER = Path("/run/aliasroll-sysctls.json")
PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True)
class Ledger:
    saved: Mapping[str, str]  # the machine's values from before the first node that holds them
    holders: tuple[str, ...] = field(default=())  # ids of the nodes whose kubelet may have changed them


def hold(
    ledger: Ledger | None, node: str, *, current: Mapping[str, str], alive: Callable[[str], bool]
) -> Ledger:
    """The ledger once `node` holds it (before its kubelet starts): today's values are the machine's
    own only when no live node holds the ledger already."""
    others = tuple(h for h in (ledger.holders if ledger else ()) if h != node and alive(h))
    saved = ledger.saved if ledger is not None and others else current
    return Ledger(saved=dict(saved), holders=(*others, node))


def release(
    ledger: Ledger | None, node: str, *, alive: Callable[[str], bool]
) -> tuple[Ledger | None, Mapping[str, str] | None]:
    """(the ledger to keep, None when no node holds it any more; the values to write back now, None
    when `node` did not hold the ledger)."""
    if ledger is None or node not in ledger.holders:
        return ledger, None
    others = tuple(h for h in ledger.holders if h != node and alive(h))
    if others:
        return Ledger(saved=ledger.saved, holders=others), {}
    return None, ledger.saved


def read_current() -> dict[str, str]:
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = (PROC_SYS / key).read_text().strip()
    return values


def write(values: Mapping[str, str]) -> None:
    for key, value in values.items():
        if key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                (PROC_SYS / key).write_text(value + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load(path: Path) -> Ledger | None:
    try:
        data = json.loads(path.read_text())
        return Ledger(saved=dict(data["saved"]), holders=tuple(data["holders"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: Path, ledger: Ledger | None) -> None:
    if ledger is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"saved": dict(ledger.saved), "holders": list(ledger.holders)}))
    tmp.replace(path)


def hold_machine(node: str, *, alive: Callable[[str], bool], path: Path = LEDGER) -> None:
    """Record `node` as a holder before its kubelet starts (and the machine's values, if it is the first)."""
    with _locked(path):
        _store(path, hold(_load(path), node, current=read_current(), alive=alive))


def release_machine(node: str, *, alive: Callable[[str], bool], path: Path = LEDGER) -> bool:
    """Once `node`'s kubelet has stopped: write the machine's values back if it was the last holder.
    False when `node` held nothing (a node recorded before the ledger existed)."""
    with _locked(path):
        kept, values = release(_load(path), node, alive=alive)
        if values is None:
            return False
        write(values)
        _store(path, kept)
        return True
