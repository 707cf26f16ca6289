"""What the real node changes on the host outside its namespace, and how stop() undoes each.

- cgroup ``/aliasroll-<id>`` in every mounted hierarchy: kubelet's cgroupRoot, so every container of
  the node lives below it, and teardown finds and kills them all before removing the cgroups.
- Mounts below the node's dirs (containerd's snapshots, kubelet's volumes): unmounted before the dirs
  are removed, and a dir with a mount left is never deleted.
- kubelet's links to container logs (``/var/log/containers``) and CNI's cached results
  (``/var/lib/cni/results``): paths they do not let us move; the node's own are removed.
- Machine-wide kernel settings kubelet rewrites at start (sysctls.KUBELET_SYSCTLS): recorded before
  it starts, restored on teardown; with other real nodes of the machine running, by the last of them
  to stop (sysctls.py).
- containerd's shims leave containerd's process group: found by the marker in their environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import sysctls
from .nodestate import NodeRecord, node_alive
from .processes import owned_by

#: CNI's result cache: libcni writes here whatever the config says; teardown removes this node's files.
CNI_CACHE_DIR = Path("/var/lib/cni/results")
#: kubelet links every container's log here (a path it does not let us move).
CONTAINER_LOG_LINKS = Path("/var/log/containers")

# ------------------------------------------------------------------------------------ cgroups


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            points.append(Path(left.split()[4]))
    return points


def make_cgroup_root(cgroup_root: str) -> None:
    """The node's cgroup in every hierarchy, with the CPUs and memory nodes of its parent."""
    root = cgroup_root.lstrip("/")
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / root
        path.mkdir(exist_ok=True)
        # A new cpuset cgroup (v1) has no CPUs or memory nodes: nothing could run in it.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (path / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((hierarchy / knob).read_text())


def cgroup_dirs(root: object) -> list[Path]:
    """Every cgroup below (and including) the node's cgroup root ``root`` (as recorded), deepest first."""
    if not isinstance(root, str) or not root.strip("/"):
        return []
    found: list[Path] = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / root.lstrip("/")
        if top.is_dir():
            found += [Path(p) for p, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def kill_containers(cgroup_root: object, timeout: float = 15.0) -> None:
    """SIGKILL every process below the node's cgroup root until none is left (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for cg in cgroup_dirs(cgroup_root):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (cg / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroups(cgroup_root: object) -> None:
    for cg in cgroup_dirs(cgroup_root):
        with contextlib.suppress(OSError):
            cg.rmdir()


def kill_shims(state_dir: Path) -> None:
    """containerd's shims leave containerd's process group, but keep its environment (our marker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and owned_by(int(entry.name), state_dir, "containerd-shim-runc-v2"):
            pids.append(int(entry.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(owned_by(p, state_dir, None) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# ------------------------------------------------------------------------------------ files


def mounts_below(directories: Sequence[Path]) -> list[Path]:
    """Mount points at or below any of ``directories``, deepest first (from /proc/self/mountinfo)."""
    found: list[Path] = []
    roots = [str(d.resolve()) for d in directories]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Octal escapes (\040 for a space) in mount points.
        point = fields[4].encode().decode("unicode_escape")
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_below(directories: Sequence[Path]) -> list[Path]:
    """Lazily unmount everything below ``directories``; returns the mount points still there."""
    for point in mounts_below(directories):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    return mounts_below(directories)


def remove_log_links(pod_logs: Path) -> None:
    """kubelet's links to the logs of containers whose logs are below ``pod_logs``."""
    logs = str(pod_logs)
    with contextlib.suppress(OSError):
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(logs + "/"):
                    link.unlink()


def remove_cni_results(network: object, run_dir: object) -> None:
    """CNI results: this node's network by name; containerd's loopback network (same name on every
    node) by the pod network namespace each file names, which lives under this node's run dir."""
    with contextlib.suppress(OSError):
        for cached in CNI_CACHE_DIR.iterdir():
            mine = isinstance(network, str) and bool(network) and cached.name.startswith(f"{network}-")
            if not mine and isinstance(run_dir, str) and cached.name.startswith("cni-loopback-"):
                with contextlib.suppress(OSError, ValueError):
                    netns = json.loads(cached.read_text()).get("netns", "")
                    mine = isinstance(netns, str) and netns.startswith(run_dir + "/")
            if mine:
                cached.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ kernel settings


def hold_sysctls(record: NodeRecord) -> None:
    """Before kubelet first starts: record the machine's values, and hold them in the machine's
    ledger (sysctls.py) for this node."""
    if "sysctls" not in record.info():
        record.update(sysctls=sysctls.read_current())
        sysctls.hold_machine(record.fact("id"), alive=node_alive)


def restore_sysctls(record: NodeRecord, *, alive: Callable[[str], bool]) -> None:
    """Hand the kernel settings back once kubelet is gone (``alive``: whether a component runs)."""
    saved = record.info().get("sysctls")
    if not isinstance(saved, dict) or "kubelet" in [c for c in record.components if alive(c)]:
        return
    node_id = record.info().get("id")
    if not (isinstance(node_id, str) and sysctls.release_machine(node_id, alive=node_alive)):
        # A node recorded before the machine's ledger existed: its own values, as then.
        sysctls.write({k: v for k, v in saved.items() if isinstance(v, str)})
    record.update(sysctls={})  # handed back: a second stop() writes nothing
