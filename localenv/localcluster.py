"""A local Kubernetes cluster built from source, for development and end-to-end tests.

No container engine is needed: etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as
plain processes, and kwok plays the kubelet of one fake node, so pods scheduled to it become Running and
Ready (no container ever runs) and Deployments become Available. With ``--real-node`` (root only) a real
node runs beside it: containerd, kubelet and kube-proxy in a network namespace of their own, so pods that
tolerate its taint run real containers (see ``localkube/node.py``). Binaries come from
``localenv/build.sh`` (or the directory named by ``ALIASROLL_CLUSTER_BIN_DIR``). The parts live in the
package ``localenv/localkube/``, one module per component; this file is its command line and keeps the
names tests, demo and bench import.

Command line (default state dir: ``<repo>/.work/cluster``)::

    python localenv/localcluster.py up [--dir DIR] [--real-node]  # start in the background
    python localenv/localcluster.py status [--dir DIR]    # exit 0 when running and healthy, 1 otherwise
    python localenv/localcluster.py selftest [--dir DIR]  # a 2-replica Deployment must become Available
    python localenv/localcluster.py gateway-crds [--dir DIR]  # install the Gateway API standard CRDs
    python localenv/localcluster.py down [--dir DIR]      # stop by saved PIDs, remove the state dir
    python localenv/localcluster.py kubectl-path          # print the built kubectl's path (stdout only)

Library (pytest)::

    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.kubectl("get", "nodes")
        token = cluster.mint_token("default", "aliasroll")
        cluster.write_kubeconfig_for_token(tmp_path / "sa.kubeconfig", token)

Measured on the 2-core development machine with warm binaries (build.sh a no-op): ``up`` took 9.5-12 s
over eight runs (17.5 s once, while a second cluster started alongside). Typical timeline: certificates
made at 0.5 s, etcd healthy at 0.8 s, kube-apiserver ready at 4 s, controller-manager and scheduler healthy
at 4.5 s, then ~5 s until the controller-manager, which mints a token per controller
(``--use-service-account-credentials``), has created the ``default`` ServiceAccount; the kwok node is
Ready by then. The selftest Deployment (2 replicas) is Available 0.5-0.9 s after creation, and ``down``
takes about 1.5 s.

Real node (``LocalCluster(dir, real_node=True)`` or ``up --real-node``; root): measured 1.5-4 s after
the kwok node is Ready (containerd serving +0.6 s, Node Ready +1.4-3 s, kube-proxy serving +1-2 s;
whole ``up`` 13-16 s), its images checked before the clock starts (0.2 s when cached). A pod placed on
it (``localkube.node.pod_placement()``: nodeSelector ``aliasroll.io/node=real`` and a toleration of
``aliasroll.io/real-node=true:NoSchedule``) is Ready 1-3 s after it is created; ``down`` takes 1.7 s.

State dir layout: ``pki/`` (CA, serving, admin and service-account keys), ``kubeconfig`` (admin,
system:masters), ``logs/<component>.log``, ``pids/<component>.pid``, ``state.json``. etcd keeps its data
on tmpfs (``/dev/shm``) when available. Every port is picked free at start, so several clusters (different
state dirs) can run at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from localkube import (
    BIN_DIR_ENV,
    CLUSTER_NAME,
    COMPONENTS,
    DEFAULT_STATE_DIR,
    EXIT_CODE_ANNOTATION,
    GATEWAY_API_GROUP,
    KWOK_STAGE_DIRS,
    NODE_NAME,
    POD_CIDR,
    READY_DELAY_ANNOTATION,
    REAL_NODE_LABEL,
    REAL_NODE_TAINT,
    REPO_ROOT,
    REQUIRED_BINARIES,
    SERVICE_CIDR,
    TERMINATION_MESSAGE_ANNOTATION,
    ClusterError,
    KubectlError,
    LocalCluster,
    RealNode,
    resolve_bin_dir,
)
from localkube.cli import main as _main

__all__ = [
    "BIN_DIR_ENV",
    "CLUSTER_NAME",
    "COMPONENTS",
    "DEFAULT_STATE_DIR",
    "EXIT_CODE_ANNOTATION",
    "GATEWAY_API_GROUP",
    "KWOK_STAGE_DIRS",
    "NODE_NAME",
    "POD_CIDR",
    "READY_DELAY_ANNOTATION",
    "REAL_NODE_LABEL",
    "REAL_NODE_TAINT",
    "REPO_ROOT",
    "REQUIRED_BINARIES",
    "SERVICE_CIDR",
    "TERMINATION_MESSAGE_ANNOTATION",
    "ClusterError",
    "KubectlError",
    "LocalCluster",
    "RealNode",
    "main",
    "resolve_bin_dir",
]


def main(argv: Sequence[str] | None = None) -> int:
    return _main(
        sys.argv[1:] if argv is None else argv, description=__doc__.split("\n\n", 1)[0] if __doc__ else None
    )


if __name__ == "__main__":
    sys.exit(main())
