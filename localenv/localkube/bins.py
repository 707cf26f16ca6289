"""Where the binaries come from: ``localenv/build.sh`` (cached builds) or ``$ALIASROLL_CLUSTER_BIN_DIR``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .common import REPO_ROOT, ClusterError

BUILD_SCRIPT = REPO_ROOT / "localenv" / "build.sh"
BIN_DIR_ENV = "ALIASROLL_CLUSTER_BIN_DIR"
#: Control-plane binaries, each also the name of its component's log and PID file.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REQUIRED_BINARIES = (*CONTROL_PLANE, "kubectl")
#: The real node's own binaries, looked up in the same directory.
NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "kubelet", "kube-proxy", "coredns")
#: Subdirectory of the bin dir holding the CNI plugins.
CNI_BIN_SUBDIR = "cni-bin"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
#: Debian packages' binaries the real node needs on PATH (runc with seccomp: see ref/real-node.md).
NODE_HOST_TOOLS = ("runc", "socat", "iptables", "nsenter", "ip", "mount", "umount")


def resolve_bin_dir(*, node: bool = False) -> Path:
    """``$ALIASROLL_CLUSTER_BIN_DIR`` or the directory printed by localenv/build.sh (builds on first
    use; with ``node`` also the real node's binaries)."""
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        bin_dir = Path(override)
    else:
        # stderr goes straight through: the first build takes long and reports its progress there.
        cmd = [str(BUILD_SCRIPT), "all" if node else "control-plane"]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode != 0:
            raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise ClusterError(f"{BUILD_SCRIPT} printed no binary directory")
        bin_dir = Path(lines[-1])
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ClusterError(f"binary dir {bin_dir} lacks executables: {', '.join(missing)}")
    return bin_dir


def missing_node_binaries(bin_dir: Path) -> list[str]:
    """What the real node needs and cannot find: in ``bin_dir``, its ``cni-bin/``, or on PATH."""
    import shutil

    missing = [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    missing += [
        f"{CNI_BIN_SUBDIR}/{p}" for p in CNI_PLUGINS if not os.access(bin_dir / CNI_BIN_SUBDIR / p, os.X_OK)
    ]
    missing += [f"{t} (on PATH)" for t in NODE_HOST_TOOLS if shutil.which(t) is None]
    return missing
