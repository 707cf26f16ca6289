"""Benchmark: `@canary` set -> promoted by the watched canary, against the sum of its step durations.

Each run registers a new (good) version of the example sentiment model, points `@canary` at it, and
follows the ModelDeployment's status.canary (read every ~0.2 s) and the registry's `@production`
until the operator has promoted the version and production runs it. The run is split into:

  noticed       @canary set -> status.canary names the version (the next registry poll)
  pods starting per step: the step's index in status -> its stepStartedAt (the weight in place:
                the canary's and production's pods available; real cold starts)
  steps         the step durations themselves (the anchor: their sum is what the canary costs by design)
  overhead      per step: stepStartedAt + duration -> the next step's index in status; for the last
                step -> @production moved in MLflow by the operator. The issue's target: under one
                analysis interval.
  roll          @production moved -> the run Succeeded (production rolled to the version; status.canary
                says so while the canary's pods drain, status.lastCanary once they are gone)
and, after it, `settled`: the canary's workload gone and production back at every replica.

    make bench-canary                                  # 3 runs, 3 x 15 s steps, analysis every 5 s
    .venv/bin/python bench/canary_promotion.py --runs 5 --steps 25:15s,50:15s,75:15s --interval 5s

Runs on a local control plane with a real node of its own (root; containerd, kubelet, kube-proxy in
a network namespace): real pods of the serving image, whose /metrics the analysis reads, a real
mlflow server, the operator as a process inside the node's namespace, and a steady stream of
requests through the Service from there (rollout_latency.py's real-node part, whose parts it uses).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import REPO, argument_parser, ignore_interrupts, percentile, prelude, unwind_on_sigterm

prelude("localenv", "tests", "")

from rollout_latency import Stream  # noqa: E402

from aliasroll.errors import InvalidSpec  # noqa: E402
from aliasroll.kube.observe import reduce_deployment  # noqa: E402
from aliasroll.spec import parse_duration  # noqa: E402
from localcluster import ClusterError, LocalCluster  # noqa: E402
from localkube import RealNode  # noqa: E402
from localkube.node import pod_placement  # noqa: E402
from mlflowserver import MlflowServer  # noqa: E402
from operatorprocess import OperatorProcess  # noqa: E402

NAMESPACE = "bench-canary"
NAME = "bench"
MODEL = "bench-sentiment"
#: Seconds a run may take before it counts as stuck (a phase that never advances).
RUN_TIMEOUT = 900.0
READ_EVERY = 0.2


@dataclass(frozen=True)
class Step:
    weight: int
    duration: str
    seconds: float


@dataclass
class Run:
    """What one run observed, in wall-clock seconds (status stamps are wall-clock, whole seconds)."""

    version: str
    set_at: float
    noticed: float | None = None
    entered: dict[int, float] = field(default_factory=dict)  # step index seen in status
    started: dict[int, float] = field(default_factory=dict)  # stepStartedAt of each step
    promoted: float | None = None  # @production seen on the version in MLflow
    succeeded: float | None = None
    settled: float | None = None
    verdicts: dict[str, str] = field(default_factory=dict)  # measuredAt -> verdict
    failed_requests: int = 0
    answered: int = 0
    timeline: list[tuple[float, str]] = field(default_factory=list)  # status as it changed


def parse_steps(text: str) -> list[Step]:
    steps = []
    for part in text.split(","):
        weight, _, duration = part.partition(":")
        if not weight.isdigit() or not duration:
            raise SystemExit(f"--steps: {part!r} is not WEIGHT:DURATION (e.g. 25:15s)")
        steps.append(Step(int(weight), duration, seconds(duration, "--steps")))
    return steps


def seconds(text: str, option: str) -> float:
    try:
        return parse_duration(text, field_path=option)
    except InvalidSpec as error:
        raise SystemExit(str(error)) from None


def register(tracking_uri: str, *, variant: str, alias: str | None = None) -> str:
    """A new version of the example model; MLflow's lines about it (it prints them to stderr) are
    shown only when registering fails."""
    from examples.sentiment.register import register_version

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return register_version(tracking_uri, MODEL, variant=variant, alias=alias)
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise


def stamp_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Cluster:
    """Reads of the benchmark's objects through one kept-alive API connection (a kubectl process per
    read every 0.2 s would cost the 2 cores more than the operator does)."""

    def __init__(self, kubeconfig: Path) -> None:
        from lightkube import Client, KubeConfig

        from aliasroll.kube.resources import ModelDeployment

        self._client = Client(config=KubeConfig.from_file(str(kubeconfig)), namespace=NAMESPACE)
        self._kind = ModelDeployment

    def status(self) -> dict[str, Any]:
        obj = self._client.get(self._kind, NAME)
        return dict(obj.get("status") or {})

    def deployment(self, name: str) -> dict[str, Any] | None:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.apps_v1 import Deployment

        try:
            return self._client.get(Deployment, name).to_dict()
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise

    def settled(self, version: str, replicas: int) -> bool:
        """Production runs `version` on every replica, rolled out, and no canary workload is left."""
        production = self.deployment(f"{NAME}-production")
        workload = reduce_deployment(production) if production else None
        return (
            workload is not None
            and workload.version == version
            and workload.rolled_out
            and workload.replicas == replicas
            and workload.available >= replicas
            and self.deployment(f"{NAME}-canary") is None
        )

    def close(self) -> None:
        self._client.close()


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s; see {log}")
        time.sleep(READ_EVERY)


def describe(status: dict[str, Any]) -> str:
    """The status fields a canary run moves, on one line (for --timeline)."""
    production = status.get("production") or {}
    canary = status.get("canary") or {}
    analysis = canary.get("analysis") or {}
    return (
        f"production v{production.get('version')} {production.get('availableReplicas', 0)}/"
        f"{production.get('replicas', 0)}  canary v{canary.get('version')} "
        f"{canary.get('availableReplicas', 0)}/{canary.get('replicas', 0)} "
        f"weight {(status.get('traffic') or {}).get('canaryWeight')}%  {canary.get('phase')} "
        f"step {canary.get('step')} started {canary.get('stepStartedAt')}  "
        f"{analysis.get('verdict')} at {analysis.get('measuredAt')}  @production "
        f"{(status.get('registry') or {}).get('aliases', {}).get('production')}"
    )


def follow(
    run: Run,
    *,
    cluster: Cluster,
    production_alias: Callable[[], str | None],
    steps: list[Step],
    replicas: int,
    log: Path,
) -> None:
    """Reads status and the registry until the version is promoted and production settled on it."""
    deadline = time.time() + RUN_TIMEOUT
    phase = ""
    while run.settled is None:
        now = time.time()
        if now > deadline:
            raise SystemExit(
                f"version {run.version}: no promotion within {RUN_TIMEOUT:.0f} s (phase {phase or 'none'},"
                f" steps entered {sorted(run.entered)}, started {sorted(run.started)}); see {log}"
            )
        status = cluster.status()
        canary = status.get("canary") or {}
        if canary.get("version") != run.version:  # its pods are gone: how the run ended is lastCanary
            canary = status.get("lastCanary") or canary
        seen = time.time()
        state = describe(status)
        if not run.timeline or run.timeline[-1][1] != state:
            run.timeline.append((seen, state))
        if canary.get("version") == run.version:
            phase = str(canary.get("phase") or "")
            if run.noticed is None:
                run.noticed = seen
            index = int(canary.get("stepIndex") or 0)
            run.entered.setdefault(index, seen)
            if canary.get("stepStartedAt") and index < len(steps):
                run.started.setdefault(index, stamp_seconds(canary["stepStartedAt"]))
            analysis = canary.get("analysis") or {}
            if analysis.get("measuredAt") and analysis.get("verdict"):
                run.verdicts[analysis["measuredAt"]] = analysis["verdict"]
            if phase == "Aborted":
                raise SystemExit(f"version {run.version} was aborted: {canary.get('message')}; see {log}")
            if phase == "Succeeded" and run.succeeded is None:
                run.succeeded = seen
        if run.promoted is None and production_alias() == run.version:
            run.promoted = time.time()
        if run.succeeded is not None and run.promoted is not None and cluster.settled(run.version, replicas):
            run.settled = time.time()
            break
        time.sleep(max(0.0, READ_EVERY - (time.time() - now)))


@dataclass(frozen=True)
class Breakdown:
    total: float  # @canary set -> Succeeded
    to_promoted: float  # @canary set -> @production moved
    noticed: float
    pods: list[float]  # per step
    overhead: list[float]  # per step
    roll: float  # @production moved -> Succeeded
    settled: float  # @canary set -> production back at every replica, canary gone


def breakdown(run: Run, steps: list[Step]) -> Breakdown:
    missing = [i for i in range(len(steps)) if i not in run.started]
    if run.noticed is None or run.promoted is None or run.succeeded is None or run.settled is None or missing:
        raise SystemExit(f"version {run.version}: incomplete record {run}")
    pods: list[float] = []
    overhead: list[float] = []
    for i, step in enumerate(steps):
        # Step 1's weight is asked for in the pass that notices @canary.
        entered = run.noticed if i == 0 else run.entered.get(i, run.started[i])
        pods.append(run.started[i] - entered)
        ended = run.entered.get(i + 1) if i + 1 < len(steps) else run.promoted
        assert ended is not None, f"step {i + 2} never seen in status"
        overhead.append(ended - (run.started[i] + step.seconds))
    return Breakdown(
        total=run.succeeded - run.set_at,
        to_promoted=run.promoted - run.set_at,
        noticed=run.noticed - run.set_at,
        pods=pods,
        overhead=overhead,
        roll=run.succeeded - run.promoted,
        settled=run.settled - run.set_at,
    )


def print_table(rows: list[tuple[str, list[float]]]) -> None:
    print(f"{'':<46}{'p50':>8}{'max':>8}{'mean':>8}   (seconds)")
    for label, values in rows:
        p50, worst = percentile(values, 0.5), max(values)
        print(f"{label:<46}{p50:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}")


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


@dataclass(frozen=True)
class Settings:
    runs: int
    replicas: int
    steps: list[Step]
    interval: str
    interval_seconds: float
    min_requests: int
    rate: float
    poll: str
    timeline: bool = False

    @property
    def step_sum(self) -> float:
        return sum(step.seconds for step in self.steps)

    def canary(self) -> dict[str, Any]:
        return {
            "alias": "canary",
            "steps": [{"weight": s.weight, "duration": s.duration} for s in self.steps],
            "analysis": {
                "interval": self.interval,
                "minRequests": self.min_requests,
                "failureLimit": 2,
                "errorRate": {"maxPercent": 1},
                # Generous: cold pods on 2 shared cores; it is the errors that must not rise.
                "latencyP99": {"maxMilliseconds": 5000},
            },
            "promotion": "auto",
        }


def stop_cluster(cluster: LocalCluster) -> None:
    try:
        cluster.stop()
    except ClusterError as error:
        print(f"stopping the cluster: {error}", file=sys.stderr)


def bench(settings: Settings, work: Path, stack: contextlib.ExitStack) -> list[tuple[Run, Breakdown]]:
    """Starts everything (each part's stop is pushed on `stack`), then the runs; prints each run."""
    from mlflow import MlflowClient

    log = work / "operator.log"
    cluster = LocalCluster(work / "cluster", real_node=True, node_images=("pause", "serving"))
    stack.callback(stop_cluster, cluster)
    server = MlflowServer(work / "mlflow")
    stack.callback(server.stop)
    print("starting the control plane with a real node and the mlflow server ...", flush=True)
    cluster.start()
    server.start()
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    # `kubectl wait` errs instead of waiting while the new CRD has no status yet: ask again until then.
    wait_until(
        lambda: (
            cluster.kubectl(
                "wait", "--for=condition=Established", "crd/modeldeployments.aliasroll.io", check=False
            ).returncode
            == 0
        ),
        timeout=60,
        what="the CRD established",
        log=log,
    )
    node = cluster.node
    address, port = node.expose_host_port(server.port)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    first = register(server.url, variant="v1", alias="production")
    # The operator as inside a cluster: in the node's namespace, where the API server is bridged to
    # 127.0.0.1:6443 and the pods' IPs (their /metrics, which the analysis reads) are reachable.
    kubeconfig = work / "operator.kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text().replace(cluster.server, "https://127.0.0.1:6443"))
    operator = OperatorProcess(
        kubeconfig=kubeconfig, log_path=log, netns=node.netns, args=["--namespace", NAMESPACE]
    )
    stack.callback(operator.stop)
    operator.start(timeout=120)
    cluster.kubectl("create", "namespace", NAMESPACE)
    resource = {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL},
            "replicas": settings.replicas,
            "registry": {"trackingUri": f"http://{address}:{port}", "pollInterval": settings.poll},
            "serving": {"image": node.images["serving"], "podTemplate": {"spec": pod_placement()}},
            "canary": settings.canary(),
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))
    reader = Cluster(cluster.kubeconfig)
    stack.callback(reader.close)
    wait_until(
        lambda: reader.settled(first, settings.replicas),
        timeout=300,
        what=f"the first deploy ({settings.replicas} replicas of version {first})",
        log=log,
    )
    service = cluster.kubectl("get", "service", NAME, "-n", NAMESPACE, "-o", "json").stdout
    cluster_ip = json.loads(service)["spec"]["clusterIP"]
    stream = Stream(node, cluster_ip, rate=settings.rate, seconds=settings.runs * RUN_TIMEOUT + 300)
    stack.callback(stream.stop)
    print(
        f"\n{settings.runs} canary runs: steps {'/'.join(f'{s.weight}%' for s in settings.steps)} for "
        f"{' + '.join(s.duration for s in settings.steps)} over {settings.replicas} replicas of the "
        f"serving image, analysis every {settings.interval} (minRequests {settings.min_requests}, "
        f"errors <= 1%, p99 <= 5 s), promotion auto, pollInterval {settings.poll}; "
        f"{settings.rate:g} requests/s through Service {cluster_ip} from the node's namespace",
        flush=True,
    )
    time.sleep(3)

    def production_alias() -> str | None:
        aliases: dict[str, str] = client.get_registered_model(MODEL).aliases
        return aliases.get("production")

    results: list[tuple[Run, Breakdown]] = []
    for number in range(1, settings.runs + 1):
        version = register(server.url, variant=f"run{number}")
        began = time.monotonic()
        run = Run(version=version, set_at=time.time())
        client.set_registered_model_alias(MODEL, "canary", version)
        follow(
            run,
            cluster=reader,
            production_alias=production_alias,
            steps=settings.steps,
            replicas=settings.replicas,
            log=log,
        )
        answers = stream.since(began)
        run.answered = len(answers)
        run.failed_requests = sum(a[1] != 200 for a in answers)
        result = breakdown(run, settings.steps)
        results.append((run, result))
        verdicts = list(run.verdicts.values())
        counted = {v: verdicts.count(v) for v in ("Passed", "Inconclusive", "Failed")}
        print(
            f"  run {number}: version {version}  total {result.total:6.2f} s"
            f"  vs steps {settings.step_sum:g} s  (promoted at {result.to_promoted:6.2f} s)\n"
            f"      noticed {result.noticed:.2f}  pods starting {sum(result.pods):.2f} [{fmt(result.pods)}]"
            f"  steps {settings.step_sum:g}  overhead {sum(result.overhead):.2f} [{fmt(result.overhead)}]"
            f"  roll {result.roll:.2f}  settled at {result.settled:.2f} s\n"
            f"      measurements {counted}; {run.answered} requests, {run.failed_requests} failed",
            flush=True,
        )
        if settings.timeline:
            for moment, state in run.timeline:
                print(f"      {moment - run.set_at:7.2f}  {state}")
        if run.failed_requests:
            kinds: dict[str, int] = {}
            for _, kind in stream.failures_since(began):
                kinds[kind] = kinds.get(kind, 0) + 1
            print(f"      failed: {kinds}", flush=True)
        time.sleep(2)
    return results


def report(settings: Settings, results: list[tuple[Run, Breakdown]]) -> None:
    interval = settings.interval_seconds
    runs = [result for _, result in results]
    per_step = [o for r in runs for o in r.overhead]
    durations = " + ".join(s.duration for s in settings.steps)
    print(
        f"\n@canary set -> promoted ({len(runs)} runs, steps {durations} = {settings.step_sum:g} s, "
        f"analysis interval {interval:g} s, {settings.replicas} replicas)"
    )
    print_table(
        [
            ("total: @canary set -> Succeeded", [r.total for r in runs]),
            ("  @canary set -> @production moved", [r.to_promoted for r in runs]),
            ("  sum of step durations (the anchor)", [settings.step_sum for _ in runs]),
            ("  noticed (registry poll)", [r.noticed for r in runs]),
            ("  pods starting (all steps)", [sum(r.pods) for r in runs]),
            ("  decision overhead (all steps)", [sum(r.overhead) for r in runs]),
            ("  roll: @production moved -> Succeeded", [r.roll for r in runs]),
            ("decision overhead per step", per_step),
            ("decision overhead per step / interval (x)", [o / interval for o in per_step]),
            ("settled: production at every replica", [r.settled for r in runs]),
        ]
    )
    worst = max(per_step)
    print(
        f"decision overhead under one analysis interval ({interval:g} s): "
        f"{'yes' if worst < interval else 'NO'} (worst step {worst:.2f} s = {worst / interval:.2f}x)"
    )
    answered = sum(run.answered for run, _ in results)
    failed = sum(run.failed_requests for run, _ in results)
    print(f"requests through the Service during the runs: {answered}, failed: {failed}")
    print(
        "note: status is read every 0.2 s and stepStartedAt has whole seconds: the overheads "
        "carry up to ~0.3 s of read delay."
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument(
        "--steps", default="25:15s,50:15s,75:15s", help="WEIGHT:DURATION,... (spec.canary.steps)"
    )
    parser.add_argument("--interval", default="5s", help="spec.canary.analysis.interval")
    parser.add_argument("--min-requests", type=int, default=10, help="spec.canary.analysis.minRequests")
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s through the Service")
    parser.add_argument(
        "--poll",
        default="10s",
        help="spec.registry.pollInterval: longer than the analysis interval, so steps that end on "
        "time show they do not ride on the poll timer",
    )
    parser.add_argument("--timeline", action="store_true", help="print each run's status as it changed")
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    settings = Settings(
        runs=args.runs,
        replicas=args.replicas,
        steps=parse_steps(args.steps),
        interval=args.interval,
        interval_seconds=seconds(args.interval, "--interval"),
        min_requests=args.min_requests,
        rate=args.rate,
        poll=args.poll,
        timeline=args.timeline,
    )
    if os.geteuid() != 0:
        raise SystemExit("the canary benchmark runs real pods on a real node: it needs root")
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-canary-"))
    try:
        RealNode.check_prerequisites(LocalCluster(work / "cluster").bin_dir)
    except ClusterError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(f"no real node: {e} (make node-binaries node-packages)") from None

    unwind_on_sigterm()
    try:
        with contextlib.ExitStack() as stack:
            try:
                results = bench(settings, work, stack)
            finally:
                ignore_interrupts()
    except KeyboardInterrupt:
        shutil.rmtree(work, ignore_errors=True)
        print("\ninterrupted: everything the benchmark started is stopped", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException:
        print(f"kept {work} (operator log: {work / 'operator.log'})", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    report(settings, results)


if __name__ == "__main__":
    main()
