"""A local cluster with a real node for a pytest session (the real-pod and install tiers).

Needs root, the node's binaries (make node-binaries) and Debian packages (make node-packages).
Without them a tier is skipped with the reason, unless ALIASROLL_REQUIRE_REAL_NODE=1 (CI), where a
missing prerequisite fails it instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from localkube import ClusterError, LocalCluster, RealNode, resolve_bin_dir
from localkube.node import DEFAULT_IMAGES

REPO = Path(__file__).resolve().parents[2]
REQUIRE_ENV = "ALIASROLL_REQUIRE_REAL_NODE"


def unavailable(reason: str) -> None:
    """Skips the tier, or fails it where a real node is required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


@contextmanager
def real_node_cluster(run: str, *, images: Sequence[str] = DEFAULT_IMAGES) -> Iterator[LocalCluster]:
    """The session's cluster in .work/<run>-cluster, stopped and removed after it (also on failure);
    leftovers of a session that was killed are removed first."""
    if os.geteuid() != 0:
        unavailable("the real node needs root (network namespace, mounts, cgroups)")
    try:
        RealNode.check_prerequisites(resolve_bin_dir(node=True))
    except ClusterError as e:
        unavailable(str(e))
    state = REPO / ".work" / f"{run}-cluster"
    if state.exists():
        LocalCluster(state).stop()
    with LocalCluster(state, real_node=True, node_images=images) as local:
        yield local
