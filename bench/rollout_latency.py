"""Benchmark: how long from `set_registered_model_alias` to the cluster following it.

For each alias move (alternating forward and back between two versions) it times:
  template   the production Deployment's pod template carries the new version
  available  every replica of the new version is available (the rollout is complete)
and prints p50 / p95 / max, also as a fraction of the poll interval: an alias move is noticed by the
next poll, so `template` should spread between 0 and one interval, plus one reconcile pass.

Then, on the same cluster's real node (root; skipped with the reason otherwise, or with
--no-real-node), the same moves on real pods of the serving image (real cold start: the model is
downloaded from MLflow and loaded; real readiness probes; kube-proxy), while a steady stream of
requests goes through the Service from inside the node's network namespace. Each move also times:
  first new    the first answer carrying the new version's X-Model-Version
  all new      from when on every answer comes from the new version (the start of the first
               request after the last answer of the old version, or the last failed one)
and counts the requests that failed during the move.

Then (kwok), the same moves pushed: a registry webhook delivers each move to the operator, the
resource's pollInterval is 60 s (--push-poll), so the time is delivery + one read + one pass.

    make bench                               # 20 kwok moves (4 replicas), 10 real ones (2), poll 2s
    .venv/bin/python bench/rollout_latency.py --moves 40 --poll 5s --replicas 2 --real-moves 20

Runs against a local control plane of its own (kwok: pods become Ready without running, plus the
real node), a real mlflow server, and the operator as a process, as in the end-to-end tests (on the
real node it runs inside the node's network namespace, as tests/e2e_real/conftest.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import argument_parser, install_crd, percentile, prelude

prelude("localenv", "tests", "")

from aliasroll.kube.observe import reduce_deployment  # noqa: E402
from aliasroll.spec import parse_duration  # noqa: E402
from localcluster import ClusterError, LocalCluster  # noqa: E402
from localkube import RealNode  # noqa: E402
from localkube.node import pod_placement  # noqa: E402
from mlflowserver import MlflowServer, free_port  # noqa: E402
from operatorprocess import OperatorProcess  # noqa: E402
from support import load  # noqa: E402

# The operator's one webhook registry (README "Push"): the bench's MLflow server, with its secret.
WEBHOOK_REGISTRY = "bench"
WEBHOOK_SECRET = "Rb4Tn8Wq1Lx6Zc3Vm9Kp2Hs7Gd0Jf5Ye"
# The server delivers webhooks to the operator on loopback (plain http, a private address), and a new
# webhook fires within a second (its list is cached this long; 60 s by default).
WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg=",
}
NAMESPACE = "bench"
NAME = "bench"
REAL_NAMESPACE = "bench-real"
REAL_MODEL = "bench-sentiment"
#: Requests per second of the stream through the Service during the real moves.
STREAM_RATE = 40.0

# The tests' load (tests/support/load.py), run inside the node's namespace: an open loop of requests
# at a fixed rate, each on a new connection (so kube-proxy picks a pod per request), one JSON line per
# answer with its start on the CLOCK_MONOTONIC this process shares with the benchmark.


def deployment(cluster: LocalCluster, namespace: str = NAMESPACE, name: str = NAME) -> dict[str, Any]:
    out = cluster.kubectl(
        "get", "deployment", f"{name}-production", "-n", namespace, "-o", "json", check=False
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


class Stream:
    """tests/support/load.py in the node's namespace, its answers gathered as they come:
    (start, status, version)."""

    def __init__(self, node: RealNode, address: str, *, rate: float, seconds: float) -> None:
        self.answers: list[tuple[float, int, str | None]] = []
        #: Failed requests: (start, what failed: an HTTP status or the client's exception).
        self.failures: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            node.nsenter_argv(*load.command(address, rate=rate, seconds=seconds, out="-", monotonic=True)),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            answer = json.loads(line)
            with self._lock:
                status = int(answer["status"])
                self.answers.append((float(answer["t"]), status, answer.get("version")))
                if status != 200:
                    self.failures.append((float(answer["t"]), answer.get("error") or f"HTTP {status}"))

    def since(self, moment: float) -> list[tuple[float, int, str | None]]:
        with self._lock:
            return sorted(a for a in self.answers if a[0] >= moment)

    def failures_since(self, moment: float) -> list[tuple[float, str]]:
        with self._lock:
            return sorted(f for f in self.failures if f[0] >= moment)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)


def print_table(title: str, rows: list[tuple[str, list[float]]], poll_seconds: float) -> None:
    print(f"\n{title}")
    print(f"{'':<34}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}   (seconds; x poll interval)")
    for label, values in rows:
        p50, p95, worst = percentile(values, 0.5), percentile(values, 0.95), max(values)
        print(
            f"{label:<34}{p50:8.2f}{p95:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}"
            f"   ({p50 / poll_seconds:.2f}x, {p95 / poll_seconds:.2f}x, {worst / poll_seconds:.2f}x)"
        )


def real_node_moves(
    *,
    cluster: LocalCluster,
    server: MlflowServer,
    work: Path,
    moves: int,
    poll: str,
    replicas: int,
) -> None:
    """The alias moves on the real node, timed by the answers of a steady stream through the
    Service; prints each move and the table."""
    from examples.sentiment.register import register_version
    from mlflow import MlflowClient

    poll_seconds = parse_duration(poll, field_path="--poll")
    node = cluster.node
    address, port = node.expose_host_port(server.port)
    tracking_uri = f"http://{address}:{port}"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    # Real models (the seed's sentiment classifier): a pod downloads and loads one before it is ready.
    versions = [
        register_version(server.url, REAL_MODEL, variant="v1", alias="production"),
        register_version(server.url, REAL_MODEL, variant="v2"),
    ]
    # The operator as inside a cluster: in the node's namespace, where the API server is bridged to
    # 127.0.0.1:6443; it watches only its namespace (the kwok part's operator has stopped by now).
    kubeconfig = work / "operator-real.kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text().replace(cluster.server, "https://127.0.0.1:6443"))
    operator = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=work / "operator-real.log",
        netns=node.netns,
        args=["--namespace", REAL_NAMESPACE],
    )
    stream: Stream | None = None
    try:
        operator.start(timeout=120)
        cluster.kubectl("create", "namespace", REAL_NAMESPACE)
        resource = {
            "apiVersion": "aliasroll.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": REAL_NAMESPACE},
            "spec": {
                "model": {"name": REAL_MODEL},
                "replicas": replicas,
                "registry": {"trackingUri": tracking_uri, "pollInterval": poll},
                "serving": {"image": node.images["serving"], "podTemplate": {"spec": pod_placement()}},
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))
        deadline = time.monotonic() + 300
        while not rolled_out(deployment(cluster, REAL_NAMESPACE), versions[0]):
            if time.monotonic() > deadline:
                raise SystemExit(f"the first real deploy did not complete; see {operator.log_path}")
            time.sleep(0.2)
        service = cluster.kubectl("get", "service", NAME, "-n", REAL_NAMESPACE, "-o", "json").stdout
        cluster_ip = json.loads(service)["spec"]["clusterIP"]
        stream = Stream(node, cluster_ip, rate=STREAM_RATE, seconds=moves * 300 + 120)

        template_times: list[float] = []
        first_times: list[float] = []
        all_times: list[float] = []
        available_times: list[float] = []
        failed_total = 0
        current = versions[0]
        print(
            f"\nreal node: {moves} alias moves, pollInterval {poll}, {replicas} replicas of the serving "
            f"image, {STREAM_RATE:g} requests/s through Service {cluster_ip} from the node's namespace",
            flush=True,
        )
        time.sleep(2)
        for move in range(moves):
            time.sleep(random.uniform(0.2, poll_seconds))
            target = versions[1] if current == versions[0] else versions[0]
            moved = time.monotonic()
            client.set_registered_model_alias(REAL_MODEL, "production", target)
            seen_template: float | None = None
            available: float | None = None
            while True:
                now = time.monotonic()
                if available is None:
                    obj = deployment(cluster, REAL_NAMESPACE)
                    now = time.monotonic()
                    if seen_template is None and template_version(obj) == target:
                        seen_template = now - moved
                    if seen_template is not None and rolled_out(obj, target):
                        available = now - moved
                answers = stream.since(moved)
                old = [a for a in answers if a[1] != 200 or a[2] != target]
                # Settled: the rollout is complete and the last 3 s of answers are all the new version.
                if available is not None and answers and answers[-1][0] - (old[-1][0] if old else moved) > 3:
                    break
                if now - moved > 300:
                    raise SystemExit(f"real move {move + 1} did not complete; see {operator.log_path}")
                time.sleep(0.1)
            assert seen_template is not None
            new = [a for a in answers if a[1] == 200 and a[2] == target]
            first_new = new[0][0] - moved
            last_old = old[-1][0] if old else moved
            all_new = next(a[0] for a in answers if a[0] > last_old) - moved
            failed = sum(a[1] != 200 for a in answers)
            failed_total += failed
            template_times.append(seen_template)
            available_times.append(available)
            first_times.append(first_new)
            all_times.append(all_new)
            current = target
            print(
                f"  move {move + 1:>2}: {current}  template {seen_template:5.2f} s"
                f"  first new {first_new:5.2f} s  all new {all_new:5.2f} s"
                f"  rollout complete {available:5.2f} s  ({len(answers)} answers, {failed} failed)",
                flush=True,
            )
            if failed:
                failures = stream.failures_since(moved)
                kinds = Counter(kind for _, kind in failures)
                print(
                    f"      failed between {failures[0][0] - moved:.2f} s and {failures[-1][0] - moved:.2f} s"
                    f" after the move: {dict(kinds)}",
                    flush=True,
                )
        answered = len(stream.since(0.0))
        print_table(
            f"alias move -> real pods (pollInterval {poll_seconds:g} s, {moves} moves, {replicas} replicas)",
            [
                ("pod template pinned", template_times),
                ("first answer from new version", first_times),
                ("every answer from new version", all_times),
                ("new pods all available", available_times),
            ],
            poll_seconds,
        )
        print(f"requests through the Service: {answered}, failed: {failed_total}")
    finally:
        if stream is not None:
            stream.stop()
        operator.stop()


WARM_NAMESPACE = "bench-warm"
WARM_MODEL = "bench-warm-sentiment"


def _mdep(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "mdep", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _serving(resource: dict[str, Any], version: str) -> bool:
    status = resource.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    return ready and (status.get("production") or {}).get("version") == version


def _warm(resource: dict[str, Any], version: str) -> bool:
    entries = (resource.get("status") or {}).get("warm") or ()
    return any(w.get("version") == version and not w.get("routed") and w.get("until") for w in entries)


def _settled(stream: Stream, moved: float, target: str, timeout: float) -> tuple[float, float, int, int]:
    """Until 3 s of answers come from `target` only: (first answer from it, every answer from it,
    answers, failed), in seconds after `moved`."""
    while True:
        answers = stream.since(moved)
        old = [a for a in answers if a[1] != 200 or a[2] != target]
        last_old = old[-1][0] if old else moved
        if answers and answers[-1][0] - last_old > 3:
            break
        if time.monotonic() - moved > timeout:
            raise SystemExit(f"the move to {target} did not settle in {timeout:.0f} s")
        time.sleep(0.1)
    first = next(a[0] for a in answers if a[1] == 200 and a[2] == target) - moved
    every = next(a[0] for a in answers if a[0] > last_old) - moved
    return first, every, len(answers), sum(a[1] != 200 for a in answers)


def real_warm_moves(
    *, cluster: LocalCluster, server: MlflowServer, work: Path, moves: int, replicas: int
) -> None:
    """Version mode (spec.rollback) on the real node: @production moved back to a warm version
    `moves` times (alternating between two versions, both warm after one cold move forward), each
    move pushed by a registry webhook (pollInterval 60 s), timed by the Service's answers; the pods'
    UIDs compared before and after."""
    from examples.sentiment.register import register_version
    from mlflow import MlflowClient

    from support.webhook_bridge import node_port_on_host

    node = cluster.node
    address, port = node.expose_host_port(server.port)
    tracking_uri = f"http://{address}:{port}"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    versions = [
        register_version(server.url, WARM_MODEL, variant="v1", alias="production"),
        register_version(server.url, WARM_MODEL, variant="v2"),
    ]
    registries = work / "warm-webhook-registries.json"
    registries.write_text(json.dumps({"bench-real": {"trackingUri": tracking_uri, "secret": WEBHOOK_SECRET}}))
    kubeconfig = work / "operator-real.kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text().replace(cluster.server, "https://127.0.0.1:6443"))
    inside = free_port()
    operator = OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=work / "operator-warm.log",
        netns=node.netns,
        args=["--namespace", WARM_NAMESPACE],
        env={
            "ALIASROLL_WEBHOOK_REGISTRIES": str(registries),
            "ALIASROLL_WEBHOOK_LISTEN": f"127.0.0.1:{inside}",
        },
    )
    stream: Stream | None = None
    with node_port_on_host(node, inside, work) as outside:
        webhook = client.create_webhook(
            name="aliasroll-bench-warm",
            url=f"http://{outside}/webhooks/mlflow/bench-real",
            events=["model_version_alias.created", "model_version_alias.deleted"],
            secret=WEBHOOK_SECRET,
        )
        try:
            operator.start(timeout=120)
            cluster.kubectl("create", "namespace", WARM_NAMESPACE)
            resource = {
                "apiVersion": "aliasroll.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": NAME, "namespace": WARM_NAMESPACE},
                "spec": {
                    "model": {"name": WARM_MODEL},
                    "replicas": replicas,
                    "rollback": {"window": "30m"},
                    "registry": {"trackingUri": tracking_uri, "pollInterval": "60s"},
                    "serving": {"image": node.images["serving"], "podTemplate": {"spec": pod_placement()}},
                },
            }
            cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))
            deadline = time.monotonic() + 300
            while not _serving(_mdep(cluster, WARM_NAMESPACE, NAME), versions[0]):
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the warm resource's first deploy did not complete; see {operator.log_path}"
                    )
                time.sleep(0.5)
            service = cluster.kubectl("get", "service", NAME, "-n", WARM_NAMESPACE, "-o", "json").stdout
            cluster_ip = json.loads(service)["spec"]["clusterIP"]
            stream = Stream(node, cluster_ip, rate=STREAM_RATE, seconds=moves * 30 + 300)
            time.sleep(2)
            moved = time.monotonic()
            client.set_registered_model_alias(WARM_MODEL, "production", versions[1])
            _, forward, _, _ = _settled(stream, moved, versions[1], 300)
            print(
                f"\nreal node, version mode (spec.rollback window 30m): {replicas} replicas, the first move "
                f"forward (cold) {forward:.2f} s to every answer from the new version; then {moves} moves "
                f"back to a warm version, pushed, {STREAM_RATE:g} requests/s through Service {cluster_ip}",
                flush=True,
            )

            def pods() -> set[str]:
                out = cluster.kubectl("get", "pods", "-n", WARM_NAMESPACE, "-o", "json").stdout
                return {p["metadata"]["uid"] for p in json.loads(out)["items"]}

            current, firsts, everys, failed_total = versions[1], [], [], 0
            for move in range(moves):
                source, target = current, versions[0] if current == versions[1] else versions[1]
                deadline = time.monotonic() + 60
                while not _warm(_mdep(cluster, WARM_NAMESPACE, NAME), target):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"version {target} is not warm; see {operator.log_path}")
                    time.sleep(0.2)
                if move == 0:
                    uids = pods()
                time.sleep(random.uniform(0.5, 1.5))
                moved = time.monotonic()
                client.set_registered_model_alias(WARM_MODEL, "production", target)
                first, every, answered, failed = _settled(stream, moved, target, 60)
                firsts.append(first)
                everys.append(every)
                failed_total += failed
                current = target
                print(
                    f"  warm move {move + 1:>2}: {source} -> {target}  first answer {first:5.2f} s"
                    f"  every answer {every:5.2f} s  ({answered} answers, {failed} failed)",
                    flush=True,
                )
            created = pods() - uids
            print(
                f"\nalias move back to a warm version -> real pods (pushed, {moves} moves, "
                f"{replicas} replicas)"
            )
            print(f"{'':<34}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}   (seconds)")
            for label, values in (("first answer from it", firsts), ("every answer from it", everys)):
                p50, p95, worst = percentile(values, 0.5), percentile(values, 0.95), max(values)
                print(f"{label:<34}{p50:8.2f}{p95:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}")
            print(
                f"requests through the Service: {len(stream.since(0.0))}, failed: {failed_total}; "
                f"pods created by the moves back: {len(created)}"
            )
        finally:
            if stream is not None:
                stream.stop()
            operator.stop()
            client.delete_webhook(webhook.webhook_id)


def push_moves(
    *,
    cluster: LocalCluster,
    server: MlflowServer,
    client: Any,
    operator: OperatorProcess,
    moves: int,
    poll: str,
    replicas: int,
) -> None:
    """The same moves with a registry webhook pushing them, the poll far away (`poll`): the time is
    MLflow's delivery, one read and one pass, not the poll."""
    from support.registry import quick_versions

    poll_seconds = parse_duration(poll, field_path="--push-poll")
    model, name = "bench-push-model", "bench-push"
    quick_versions(client, model, 2)
    client.set_registered_model_alias(model, "production", "1")
    client.create_webhook(
        name="aliasroll-bench",
        url=f"http://{operator.extra_env['ALIASROLL_WEBHOOK_LISTEN']}/webhooks/mlflow/{WEBHOOK_REGISTRY}",
        events=["model_version_alias.created", "model_version_alias.deleted"],
        secret=WEBHOOK_SECRET,
    )
    resource = {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": model},
            "replicas": replicas,
            "registry": {"trackingUri": server.url, "pollInterval": poll},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))
    deadline = time.monotonic() + 120
    while not rolled_out(deployment(cluster, name=name), "1"):
        if time.monotonic() > deadline:
            raise SystemExit("the push resource's first deploy did not complete")
        time.sleep(0.1)
    time.sleep(2.0)  # the server's cached webhook list (1 s here) now holds the webhook

    template_times: list[float] = []
    available_times: list[float] = []
    current = "1"
    print(f"\n{moves} pushed alias moves, pollInterval {poll}, {replicas} replicas", flush=True)
    for move in range(moves):
        time.sleep(random.uniform(0.5, 2.0))
        target = "2" if current == "1" else "1"
        moved = time.monotonic()
        client.set_registered_model_alias(model, "production", target)
        seen_template = None
        while True:
            obj = deployment(cluster, name=name)
            now = time.monotonic()
            if seen_template is None and template_version(obj) == target:
                seen_template = now - moved
            if seen_template is not None and rolled_out(obj, target):
                available = now - moved
                break
            if now - moved > poll_seconds / 2:
                raise SystemExit(f"pushed move {move + 1} took longer than half the poll: was it pushed?")
        template_times.append(seen_template)
        available_times.append(available)
        current = target
        print(
            f"  move {move + 1:>2}: {current}  template {seen_template:5.2f} s  available {available:5.2f} s",
            flush=True,
        )
    print(f"\nalias move -> cluster, pushed (pollInterval {poll_seconds:g} s, {moves} moves)")
    print(f"{'':<26}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}   (seconds)")
    for label, values in (
        ("pod template pinned", template_times),
        ("new pods all available", available_times),
    ):
        p50, p95, worst = percentile(values, 0.5), percentile(values, 0.95), max(values)
        print(f"{label:<26}{p50:8.2f}{p95:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}")


def parse_args() -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--poll", default="2s", help="spec.registry.pollInterval (Go duration)")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--real-moves", type=int, default=10, help="alias moves on the real node")
    parser.add_argument("--real-replicas", type=int, default=2, help="replicas on the real node")
    parser.add_argument("--no-real-node", action="store_true", help="the kwok part only")
    parser.add_argument(
        "--warm-moves",
        type=int,
        default=10,
        help="moves back to a warm version on the real node (spec.rollback, pushed); 0: none",
    )
    parser.add_argument("--warm-only", action="store_true", help="on the real node, the warm moves only")
    parser.add_argument("--push-moves", type=int, default=20, help="alias moves pushed by a webhook (kwok)")
    parser.add_argument("--push-poll", default="60s", help="pollInterval of the pushed resource")
    return parser.parse_args()


def real_node_ready(args: argparse.Namespace, work: Path) -> bool:
    """Whether the real-node part runs: asked for, and the node's prerequisites are there."""
    if args.no_real_node:
        return False
    try:
        RealNode.check_prerequisites(LocalCluster(work / "cluster").bin_dir)
    except ClusterError as e:
        print(f"no real node: {e}; the kwok part only", flush=True)
        return False
    return True


def webhook_operator(cluster: LocalCluster, server: MlflowServer, work: Path) -> OperatorProcess:
    """The CRD, and the operator (not started) with the bench's MLflow server as its one webhook
    registry."""
    install_crd(cluster, rbac=False)
    registries = work / "webhook-registries.json"
    registries.write_text(
        json.dumps({WEBHOOK_REGISTRY: {"trackingUri": server.url, "secret": WEBHOOK_SECRET}})
    )
    return OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        log_path=work / "operator.log",
        env={
            "ALIASROLL_SERVING_IMAGE": "bench:1",
            "ALIASROLL_WEBHOOK_REGISTRIES": str(registries),
            "ALIASROLL_WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )


def first_deploy(cluster: LocalCluster, server: MlflowServer, args: argparse.Namespace, work: Path) -> Any:
    """Version 1 of the model at @production and its resource rolled out; the MLflow client."""
    from mlflow import MlflowClient

    from support.registry import quick_versions

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
    return client


def polled_moves(
    cluster: LocalCluster, client: Any, args: argparse.Namespace, poll_seconds: float, work: Path
) -> tuple[list[float], list[float]]:
    """The alias moved `--moves` times, found by the poll: seconds to the template, to all available."""
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
            f"  move {move + 1:>2}: {current}  template {seen_template:5.2f} s  available {available:5.2f} s",
            flush=True,
        )
    return template_times, available_times


def report_polled(
    moves: int, poll_seconds: float, template_times: list[float], available_times: list[float]
) -> None:
    print(f"\nalias move -> cluster (pollInterval {poll_seconds:g} s, {moves} moves)")
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
    print("note: the timer reads the Deployment with kubectl (tens of ms a read): that is the resolution.")


def main() -> None:
    args = parse_args()
    poll_seconds = parse_duration(args.poll, field_path="--poll")
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-"))
    real_node = real_node_ready(args, work)
    # The kwok part's pods carry no placement, so they stay on the kwok node beside the real one.
    cluster = LocalCluster(work / "cluster", real_node=real_node, node_images=("pause", "serving"))
    server = MlflowServer(work / "mlflow", extra_env=WEBHOOK_SERVER_ENV)
    operator: OperatorProcess | None = None
    try:
        print(
            f"starting the control plane{' with a real node' if real_node else ''} and the mlflow server ...",
            flush=True,
        )
        cluster.start()
        server.start()
        operator = webhook_operator(cluster, server, work)
        operator.start()
        client = first_deploy(cluster, server, args, work)
        if not args.warm_only:
            report_polled(args.moves, poll_seconds, *polled_moves(cluster, client, args, poll_seconds, work))
        if args.push_moves and not args.warm_only:
            push_moves(
                cluster=cluster,
                server=server,
                client=client,
                operator=operator,
                moves=args.push_moves,
                poll=args.push_poll,
                replicas=args.replicas,
            )
        if real_node:
            operator.stop()
            operator = None
            if not args.warm_only:
                real_node_moves(
                    cluster=cluster,
                    server=server,
                    work=work,
                    moves=args.real_moves,
                    poll=args.poll,
                    replicas=args.real_replicas,
                )
            if args.warm_moves:
                real_warm_moves(
                    cluster=cluster,
                    server=server,
                    work=work,
                    moves=args.warm_moves,
                    replicas=args.real_replicas,
                )
    finally:
        if operator is not None:
            operator.stop()
        server.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
