"""Benchmark: how long from `set_registered_model_alias` to the cluster following it.

For each alias move (alternating forward and back between two versions) it times:
  template   the production Deployment's pod template carries the new version
  available  every replica of the new version is available (the rollout is complete)
and prints p50 / p95 / max, also as a fraction of the poll interval: an alias move is noticed by the
next poll, so `template` should spread between 0 and one interval, plus one reconcile pass.

    make bench                               # 20 moves, pollInterval 2s, 4 replicas
    .venv/bin/python bench/rollout_latency.py --moves 40 --poll 5s --replicas 2

Runs against a local control plane of its own (kwok: pods become Ready without running), a real
mlflow server, and the operator as a process, as in the end-to-end tests.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "localenv"), str(REPO / "tests")]

from aliasroll.kube.observe import reduce_deployment  # noqa: E402
from aliasroll.spec import parse_duration  # noqa: E402
from localcluster import LocalCluster  # noqa: E402
from mlflowserver import MlflowServer  # noqa: E402
from operatorprocess import OperatorProcess  # noqa: E402

NAMESPACE = "bench"
NAME = "bench"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def deployment(cluster: LocalCluster) -> dict[str, Any]:
    out = cluster.kubectl(
        "get", "deployment", f"{NAME}-production", "-n", NAMESPACE, "-o", "json", check=False
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def template_version(obj: dict[str, Any]) -> str | None:
    workload = reduce_deployment(obj) if obj else None
    return workload.version if workload else None


def rolled_out(obj: dict[str, Any], version: str) -> bool:
    """The rule the operator itself applies (and `kubectl rollout status`): every replica updated
    to this version and available, no old replica left."""
    workload = reduce_deployment(obj) if obj else None
    return workload is not None and workload.version == version and workload.rolled_out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--poll", default="2s", help="spec.registry.pollInterval (Go duration)")
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()
    poll_seconds = parse_duration(args.poll, field_path="--poll")

    from mlflow import MlflowClient

    from support.registry import quick_versions

    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-"))
    cluster = LocalCluster(work / "cluster")
    server = MlflowServer(work / "mlflow")
    operator: OperatorProcess | None = None
    try:
        print("starting the control plane and the mlflow server ...", flush=True)
        cluster.start()
        server.start()
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.aliasroll.io")
        operator = OperatorProcess(
            kubeconfig=cluster.kubeconfig,
            log_path=work / "operator.log",
            env={"ALIASROLL_SERVING_IMAGE": "bench:1"},
        )
        operator.start()
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        quick_versions(client, "bench-model", 2)
        client.set_registered_model_alias("bench-model", "production", "1")
        cluster.kubectl("create", "namespace", NAMESPACE)
        resource = {
            "apiVersion": "aliasroll.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "model": {"name": "bench-model"},
                "replicas": args.replicas,
                "registry": {"trackingUri": server.url, "pollInterval": args.poll},
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))
        deadline = time.monotonic() + 120
        while not rolled_out(deployment(cluster), "1"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the first deploy did not complete; see {work / 'operator.log'}")
            time.sleep(0.1)

        template_times: list[float] = []
        available_times: list[float] = []
        current = "1"
        print(f"{args.moves} alias moves, pollInterval {args.poll}, {args.replicas} replicas", flush=True)
        for move in range(args.moves):
            # Moves land at random points of the poll cycle, as real ones do.
            time.sleep(random.uniform(0.2, poll_seconds))
            target = "2" if current == "1" else "1"
            moved = time.monotonic()
            client.set_registered_model_alias("bench-model", "production", target)
            seen_template = None
            while True:
                obj = deployment(cluster)
                now = time.monotonic()
                if seen_template is None and template_version(obj) == target:
                    seen_template = now - moved
                if seen_template is not None and rolled_out(obj, target):
                    available = now - moved
                    break
                if now - moved > 120:
                    raise SystemExit(f"move {move + 1} did not complete; see {work / 'operator.log'}")
            template_times.append(seen_template)
            available_times.append(available)
            current = target
            print(
                f"  move {move + 1:>2}: {current}  template {seen_template:5.2f} s"
                f"  available {available:5.2f} s",
                flush=True,
            )

        print(f"\nalias move -> cluster (pollInterval {poll_seconds:g} s, {args.moves} moves)")
        print(f"{'':<26}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}   (seconds; x poll interval)")
        for label, values in (
            ("pod template pinned", template_times),
            ("new pods all available", available_times),
        ):
            p50, p95, worst = percentile(values, 0.5), percentile(values, 0.95), max(values)
            print(
                f"{label:<26}{p50:8.2f}{p95:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}"
                f"   ({p50 / poll_seconds:.2f}x, {p95 / poll_seconds:.2f}x, {worst / poll_seconds:.2f}x)"
            )
        print(
            "note: the timer reads the Deployment with kubectl (tens of ms a read): that is the resolution."
        )
    finally:
        if operator is not None:
            operator.stop()
        server.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
