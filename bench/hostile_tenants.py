"""Benchmark: one operator shared by a hostile tenant A and an ordinary tenant B (issue 21).

The scenario of the hostile-tenant tier (tests/e2e/hostile_tenants.py), on a control plane of its
own (kwok) with more alias moves for steadier medians:

  before     B's @production moved (polled each second) -> B's status Ready at the new version, p50
             of --moves moves; then B's watched canary (one step, analysis on a well-behaved
             Prometheus) from @canary set to promoted
  A          1,000 foreign Deployments with the operator's label (16 KiB each), then 40 resources
             whose registry or Prometheus drips a byte a second, streams without end, answers 30 MB
             or never answers (an endpoint each) and 100 naming missing Secrets; one move of B
             while they arrive (pinned, rolled out, Ready); forged and oversized webhook deliveries
             from then on
  after      the same moves and canary beside A
  operator   peak RSS (VmHWM) against half the memory limit in manifests/operator.yaml, by phase;
             CPU seconds by phase; whether it ran through (same process, no crash in its log)

    make bench-hostile
    .venv/bin/python bench/hostile_tenants.py --moves 9
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import argument_parser, exit_on_sigterm, install_crd, prelude, verdict

prelude("localenv", "tests", "tests/e2e", "tests/unit", "")

from harness import OPERATOR_NAMESPACE, Kube  # noqa: E402
from hostile_tenants import run  # noqa: E402

from localcluster import LocalCluster  # noqa: E402
from mlflowserver import MlflowServer  # noqa: E402

RATIO_GOAL = 1.2


def report(figures: dict[str, Any]) -> None:
    before, after, rss, process = figures["before"], figures["after"], figures["rss_mib"], figures["operator"]
    print(
        f"\nA: {figures['a_resources']} ModelDeployments, "
        f"{figures['foreign_deployments']} foreign Deployments"
    )
    print(
        f"   created in {figures['a_created_seconds']:.1f} s + {figures['foreign_created_seconds']:.1f} s; "
        f"every resource of A met its endpoint {figures['a_settled_seconds']:.1f} s after they began"
    )
    print(f"B's alias move -> Ready, {figures['moves']} moves each:")
    for label, part in (("before A", before), ("beside A", after)):
        moves = sorted(part["moves"])
        print(
            f"   {label:9} p50 {part['median']:.2f} s  min {moves[0]:.2f} s  max {moves[-1]:.2f} s"
            f"  (pod template pinned p50 {part['pinned_median']:.2f} s)"
        )
    met = verdict(figures["ratio"] <= RATIO_GOAL, "MISSED")
    print(f"   ratio {figures['ratio']:.2f}x (goal <= {RATIO_GOAL}x: {met})")
    print(
        f"B's watched canary, @canary set -> promoted: {before['canary']:.1f} s, "
        f"beside A {after['canary']:.1f} s"
    )
    peak = max(rss["peak_VmHWM"], rss["largest_sampled"])
    print(
        f"operator RSS: {figures['rss_before_a_mib']:.0f} MiB"
        f" before A, peak {peak:.0f} MiB (goal < {rss['limit_half']:.0f} MiB: "
        f"{verdict(peak < rss['limit_half'], 'MISSED')})"
    )
    print(f"   largest by phase (MiB): {json.dumps(rss['largest_by_phase'])}")
    print(f"operator CPU seconds by phase: {json.dumps(figures['operator_cpu_seconds_by_phase'])}")
    print(f"load average at each phase's end: {json.dumps(figures['load_average_at_phase_end'])}")
    ran_through = process["running"] and process["starts"] == 1 and not process["crashes"]
    print(f"operator ran through (same process, no crash in its log): {verdict(ran_through, 'MISSED')}")
    print("webhook deliveries from A, by case and answer:")
    for case, outcomes in figures["webhooks"].items():
        print(
            f"   {case}: " + ", ".join(f"{outcome} x{count}" for outcome, count in sorted(outcomes.items()))
        )
    print("A's servers (connections accepted, body bytes written): " + json.dumps(figures["servers"]))


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--moves", type=int, default=15, help="timed alias moves of B, before A and beside A")
    args = parser.parse_args()
    exit_on_sigterm()  # a stopped run still stops what it started
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-hostile-"))
    succeeded = False
    try:
        with LocalCluster(work / "cluster") as cluster, MlflowServer(work / "mlflow") as server:
            from mlflow import MlflowClient

            install_crd(cluster)
            cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE)
            kube = Kube(cluster)
            try:
                figures = run(
                    cluster,
                    kube,
                    MlflowClient(tracking_uri=server.url, registry_uri=server.url),
                    tracking_uri=server.url,
                    folder=work,
                    log_path=work / "operator.log",
                    moves=args.moves,
                )
            finally:
                kube.close()
        report(figures)
        succeeded = True
    finally:
        if succeeded:  # on failure the operator's log stays for a look
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"the operator's log: {work / 'operator.log'}")


if __name__ == "__main__":
    main()
