"""A pass's planning, this tree against a git ref, side by side: microseconds per `planner.plan`.

Three resources a busy operator plans again and again: one at rest, one rolling to a new version,
one whose watched canary is mid-step with its analysis. Each is planned on the status its own last
plan wrote (the steady state of a pass). Both trees run the same script in rounds that alternate,
each round a fresh process timing its own CPU, and the table gives the best round of each (noise
only adds time) and the ratio (this tree over the ref): a refactor of the planner should leave it
near 1.00x.

    make bench-planner                  # against HEAD (what the working tree changes)
    .venv/bin/python bench/planner.py --against <ref>
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import REPO, argument_parser

SCENARIOS = ("at rest", "rolling", "canary mid-step")


def scenarios() -> dict[str, dict[str, Any]]:
    """The planner's inputs per scenario (built by whichever `aliasroll` is first on sys.path)."""
    from aliasroll.planning.state import AliasTarget, ObservedState, ObservedWorkload, RegistryView
    from aliasroll.planning.workloads import WorkloadDefaults
    from aliasroll.registry.types import VersionInfo
    from aliasroll.spec import ResourceRef, Track, parse_spec

    def info(version: str) -> VersionInfo:
        return VersionInfo(
            model="sentiment", version=version, status="READY", run_id=f"r{version}", source=None
        )

    def view(production: str, canary: str | None = None) -> RegistryView:
        return RegistryView(
            model="sentiment",
            production=AliasTarget(alias="production", version=production, info=info(production)),
            canary=AliasTarget(alias="canary", version=canary, info=info(canary) if canary else None),
        )

    def workload(track: Any, version: str, replicas: int) -> ObservedWorkload:
        return ObservedWorkload(
            name=f"sentiment-{track.value}", track=track, model="sentiment", version=version,
            replicas=replicas, available=replicas, rolled_out=True, stalled=None, run_id=f"r{version}",
        )  # fmt: skip

    raw = {"model": {"name": "sentiment"}, "registry": {"trackingUri": "http://mlflow:5000"}, "replicas": 10}
    canary = {
        "alias": "canary",
        "steps": [{"weight": 10, "duration": "10m"}, {"weight": 50, "duration": "10m"}],
        "analysis": {"interval": "30s", "errorRate": {"maxPercent": 1}, "latency": {"p99MaxSeconds": 1}},
    }
    at_version_2 = ObservedState(workloads={Track.PRODUCTION: workload(Track.PRODUCTION, "2", 10)})
    with_canary = ObservedState(
        workloads={
            Track.PRODUCTION: workload(Track.PRODUCTION, "2", 9),
            Track.CANARY: workload(Track.CANARY, "3", 1),
        }
    )
    inputs = {
        "at rest": (parse_spec(raw), view("2"), at_version_2),
        "rolling": (parse_spec(raw), view("3"), at_version_2),
        "canary mid-step": (parse_spec(raw | {"canary": canary}), view("2", "3"), with_canary),
    }
    owner = ResourceRef(namespace="ml", name="sentiment", uid="u1", generation=1)
    defaults = WorkloadDefaults(image="aliasroll/serving:bench")
    return {
        name: {"owner": owner, "defaults": defaults, "spec": spec, "view": registry, "observed": observed}
        for name, (spec, registry, observed) in inputs.items()
    }


def measure(seconds: float) -> dict[str, float]:
    """Microseconds per plan of each scenario, planned for about `seconds` each after a warm-up."""
    from aliasroll.planning import planner

    timings: dict[str, float] = {}
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    for name, inputs in scenarios().items():
        status: Any = {}
        for step in range(20):  # the steady state: each plan on the status the last one wrote
            status = planner.plan(**inputs, previous_status=status, now=now + timedelta(seconds=step)).status
        # CPU time, not wall time: on a shared machine another process's work is not the planner's.
        count, started = 0, time.process_time()
        while (elapsed := time.process_time() - started) < seconds:
            for _ in range(50):
                planner.plan(**inputs, previous_status=status, now=now)
            count += 50
        timings[name] = elapsed / count * 1e6
    return timings


def run_round(operator_dir: Path, seconds: float) -> dict[str, float]:
    script = f"import sys; sys.path[:0] = [{str(operator_dir)!r}, {str(REPO / 'bench')!r}]; "
    script += f"import json, planner; print(json.dumps(planner.measure({seconds})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--against", default="HEAD", help="the git ref to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per scenario and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aliasroll-bench-planner-") as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(ref_tree), args.against],
            check=True,
        )
        try:
            rounds: dict[str, list[dict[str, float]]] = {"this tree": [], args.against: []}
            for _ in range(args.rounds):  # alternating, so a noisy stretch hits both
                rounds["this tree"].append(run_round(REPO / "operator", args.seconds))
                rounds[args.against].append(run_round(ref_tree / "operator", args.seconds))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(ref_tree)], check=False
            )
    print(f"planner.plan, CPU microseconds per call (best of {args.rounds} rounds)")
    print(f"{'scenario':<18} {'this tree':>10} {args.against[:12]:>12} {'ratio':>7}")
    for name in SCENARIOS:
        ours = min(r[name] for r in rounds["this tree"])
        theirs = min(r[name] for r in rounds[args.against])
        print(f"{name:<18} {ours:>10.1f} {theirs:>12.1f} {ours / theirs:>6.2f}x")


if __name__ == "__main__":
    main()
