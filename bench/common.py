"""What the benchmarks share: the prelude (where their imports come from, MLflow kept quiet), the
argument parser, the cluster's CRD and RBAC, the stop on SIGTERM, and the statistics of their tables.

A benchmark calls `prelude(...)` before it imports from localenv/, tests/ or the operator.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]


def prelude(*folders: str, quiet_mlflow: bool = True) -> None:
    """Put the repository's folders first on sys.path, in this order ("" is the repository itself).

    quiet_mlflow: the timings are the output; MLflow's run links and INFO lines (from registering the
    models) would drown them.
    """
    if quiet_mlflow:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    sys.path[:0] = [str(REPO / folder) if folder else str(REPO) for folder in folders]


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """The parser of a benchmark's options, its module docstring as the description."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def install_crd(cluster: Any, *, rbac: bool = True) -> None:
    """The ModelDeployment CRD, established; with rbac, manifests/ too (the ServiceAccount and its RBAC)."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    # A wait right after the apply can find no conditions yet ("accessor error"), and fails: again.
    for attempt in range(5):
        done = cluster.kubectl(
            "wait", "--for=condition=Established", "crd/modeldeployments.aliasroll.io", check=attempt == 4
        )
        if done.returncode == 0:
            break
        time.sleep(1)
    if rbac:
        cluster.kubectl("apply", "-k", str(REPO / "manifests"))


def exit_on_sigterm() -> None:
    """A stopped run (kill, a timeout) exits 143 through the finally blocks, which stop what it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def unwind_on_sigterm() -> None:
    """SIGTERM (make killed, a CI timeout) unwinds like Ctrl-C, so everything started is stopped."""

    def interrupt(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def ignore_interrupts() -> None:
    """While stopping what was started: a second Ctrl-C must not leave half of it running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` (0 to 1) of the sorted values, the nearest index rounded."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def nearest_rank(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile (`percent` 0 to 100) of an ascending list."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def verdict(ok: bool, missed: str = "NOT met") -> str:
    return "met" if ok else missed
