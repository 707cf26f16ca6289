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

Then version mode on the real node (spec.rollback, every move pushed, a steady stream of requests
through each resource's Service), beside a cold start measured in the same run:
  warm moves  @production back to a warm version (--warm-moves times, --real-replicas replicas):
              first and every answer from it, against the first move forward (cold)
  promotion   a canary at a fixed 20 % of 10 replicas promoted: every answer from it, against one
              cold start (the other 8 pods of the promoted version, the last passing its probe)
  bake        a move to a version failing 30 % of its requests, its bake failing: from the first
              reading that could fail to @production back in MLflow and to every answer from the
              previous version, against the bound interval + 2 s
  cost        the warm pods each ModelDeployment holds (pods of its Deployments labelled
              aliasroll.io/role=warm, against maxWarm x floor) and their memory, read from the
              containers' cgroups on this machine, against the production pods'
`--warm`, `--promotion`, `--bake` run those parts alone (with --warm-only implied); none of them: all.
Answers are counted by tests/support/answers.py, as the real-node tests count them.

    make bench                               # 20 kwok moves (4 replicas), 10 real ones (2), poll 2s
    .venv/bin/python bench/rollout_latency.py --moves 40 --poll 5s --replicas 2 --real-moves 20
    .venv/bin/python bench/rollout_latency.py --warm-only --real-replicas 4   # version mode only
    .venv/bin/python bench/rollout_latency.py --promotion                      # that part alone

Runs against a local control plane of its own (kwok: pods become Ready without running, plus the
real node), a real mlflow server, and the operator as a process, as in the end-to-end tests (on the
real node it runs inside the node's network namespace, as tests/e2e_real/conftest.py runs it).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from support.answers import SETTLED, FirstSeen, Stream, log_misbehaving, quiet_for, settle, timed  # noqa: E402

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
        stream = Stream(node, cluster_ip, work / "real.jsonl", rate=STREAM_RATE, seconds=moves * 300 + 120)

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
                # Settled: the rollout is complete and the last 3 s of answers are all the new version.
                if available is not None and quiet_for(answers, moved, target) > SETTLED:
                    break
                if now - moved > 300:
                    raise SystemExit(f"real move {move + 1} did not complete; see {operator.log_path}")
                time.sleep(0.1)
            assert seen_template is not None
            timing = timed(answers, moved, target)
            first_new, all_new, failed = timing.first_new, timing.all_new, timing.failed
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
                failures = stream.failed(moved)
                kinds = Counter(a.get("error") or f"HTTP {a['status']}" for a in failures)
                print(
                    f"      failed between {failures[0]['t'] - moved:.2f} s and "
                    f"{failures[-1]['t'] - moved:.2f} s after the move: {dict(kinds)}",
                    flush=True,
                )
        answered = len(stream.read())
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


# --------------------------------------------------------------- version mode (spec.rollback), real node

WARM_NAMESPACE = "bench-warm"
WARM_MODEL = "bench-warm-sentiment"
PROMOTION_MODEL = "bench-promotion-sentiment"
BAKE_MODEL = "bench-bake-sentiment"
PROMOTION = "promotion"  # the promotion's ModelDeployment
BAKE = "bake"  # the bake's
PROMOTED_REPLICAS = 10
CANARY_WEIGHT = 20  # a fixed share: 2 of the 10 pods
FAIL_SHARE = 0.3  # of the baked version's answers, a deliberate 500
BAKE_INTERVAL = 5
# tests/e2e_real/test_bake_real.py's bake: a reading every 5 s, failing at the first failed one.
BAKE_SPEC = {
    "window": "30m",
    "bake": {
        "duration": "60s",
        "analysis": {
            "interval": f"{BAKE_INTERVAL}s",
            "failureLimit": 1,
            "minRequests": 10,
            "errorRate": {"maxPercent": 5},
        },
    },
}
ROLE = "aliasroll.io/role"
OWNER = "aliasroll.io/modeldeployment"
MEMORY_SOURCE = (
    "the node's cgroups (v1 memory controller): each container's cgroup below kubelet's cgroupRoot, "
    "kubepods/<qos>/pod<uid>/<container id>; working set = memory.usage_in_bytes - total_inactive_file "
    "(as kubelet computes container_memory_working_set_bytes), rss = memory.stat total_rss "
    "(v2: memory.current - inactive_file, anon)"
)


@dataclass
class WarmStack:
    """The version-mode part's operator (in the node's namespace, watching WARM_NAMESPACE, every move
    pushed by a registry webhook) and what its parts share."""

    cluster: LocalCluster
    server: MlflowServer
    client: Any  # MlflowClient on the host's address of the server
    tracking_uri: str  # the server as the operator and the pods see it
    work: Path
    operator: OperatorProcess

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        out = self.cluster.kubectl(*args, "-n", WARM_NAMESPACE, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def mdep(self, name: str) -> dict[str, Any]:
        return self.kubectl_json("get", "mdep", name)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items = self.kubectl_json("get", "pods", "-l", selector).get("items") or []
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def apply(self, name: str, model: str, replicas: int, **spec: Any) -> None:
        """A ModelDeployment of `model` on the real node in version mode, its moves pushed."""
        node = self.cluster.node
        body = {
            "model": {"name": model},
            "replicas": replicas,
            "rollback": {"window": "30m"},
            "registry": {"trackingUri": self.tracking_uri, "pollInterval": "60s"},
            "serving": {"image": node.images["serving"], "podTemplate": {"spec": pod_placement()}},
            **spec,
        }
        resource = {
            "apiVersion": "aliasroll.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": WARM_NAMESPACE},
            "spec": body,
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))

    def wait(self, name: str, holds: Any, what: str, timeout: float = 420) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not holds(found := self.mdep(name)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: {what} not seen in {timeout:.0f} s; see {self.operator.log_path}")
            time.sleep(0.5)
        return found

    def stream(self, name: str, seconds: float = 900) -> Stream:
        """STREAM_RATE requests a second through `name`'s Service, from the node's namespace."""
        address = self.kubectl_json("get", "service", name)["spec"]["clusterIP"]
        path = self.work / f"{name}-{time.monotonic_ns()}.jsonl"
        return Stream(self.cluster.node, address, path, rate=STREAM_RATE, seconds=seconds)

    def move(self, model: str, version: str, alias: str = "production") -> float:
        moved = time.monotonic()
        self.client.set_registered_model_alias(model, alias, version)
        return moved


@contextmanager
def warm_stack(cluster: LocalCluster, server: MlflowServer, work: Path) -> Iterator[WarmStack]:
    """The operator of the version-mode part started, the registry webhook pointing at it; both gone
    on the way out."""
    from mlflow import MlflowClient

    from support.webhook_bridge import node_port_on_host

    node = cluster.node
    address, port = node.expose_host_port(server.port)
    tracking_uri = f"http://{address}:{port}"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
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
            yield WarmStack(cluster, server, client, tracking_uri, work, operator)
        finally:
            operator.stop()
            client.delete_webhook(webhook.webhook_id)


def _serving(resource: dict[str, Any], version: str, canary: str | None = None) -> bool:
    status = resource.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
    )
    return (
        ready
        and (status.get("production") or {}).get("version") == version
        and (canary is None or (status.get("canary") or {}).get("version") == canary)
    )


def _warm(resource: dict[str, Any], version: str) -> bool:
    entries = (resource.get("status") or {}).get("warm") or ()
    return any(w.get("version") == version and not w.get("routed") and w.get("until") for w in entries)


@dataclass
class WarmFigures:
    """What the version-mode part measured, for its table (seconds; absent: the part did not run)."""

    replicas: int = 0
    warm_every: list[float] = field(default_factory=list)
    warm_first: list[float] = field(default_factory=list)
    cold_forward: float | None = None  # the warm part's first move (cold: the new version's pods start)
    promoted: float | None = None  # promotion: every answer from the promoted version
    promotion_cold: float | None = None  # its new pods' cold start: the last passing its probe
    bake_back: float | None = None  # from the first reading that could fail: @production back in MLflow
    bake_every: float | None = None  # ...: every answer from the previous version
    resources: list[str] = field(default_factory=list)


def real_warm_moves(stack: WarmStack, moves: int, replicas: int, figures: WarmFigures) -> None:
    """@production moved back to a warm version `moves` times (alternating between two versions, both
    warm after one cold move forward), timed by the Service's answers; the pods' UIDs compared."""
    from examples.sentiment.register import register_version

    url = stack.server.url
    versions = [
        register_version(url, WARM_MODEL, variant="v1", alias="production"),
        register_version(url, WARM_MODEL, variant="v2"),
    ]
    stack.apply(NAME, WARM_MODEL, replicas)
    figures.resources.append(NAME)
    stack.wait(NAME, lambda found: _serving(found, versions[0]), "the first deploy Ready", timeout=300)
    selector = f"{OWNER}={NAME}"
    with stack.stream(NAME, seconds=moves * 30 + 300) as stream:
        time.sleep(2)
        forward = settle(stream, stack.move(WARM_MODEL, versions[1]), versions[1], timeout=300)
        figures.replicas, figures.cold_forward = replicas, forward.all_new
        print(
            f"\nreal node, version mode (spec.rollback window 30m): {replicas} replicas, the first move "
            f"forward (cold) {forward.all_new:.2f} s to every answer from the new version; then {moves} "
            f"moves back to a warm version, pushed, {STREAM_RATE:g} requests/s through the Service",
            flush=True,
        )
        current, failed_total, uids = versions[1], 0, set[str]()
        for number in range(moves):
            source, target = current, versions[0] if current == versions[1] else versions[1]
            stack.wait(NAME, lambda found, v=target: _warm(found, v), f"version {target} warm", timeout=60)
            uids = uids or {p["metadata"]["uid"] for p in stack.pods(selector)}
            time.sleep(random.uniform(0.5, 1.5))
            move = settle(stream, stack.move(WARM_MODEL, target), target, timeout=60)
            figures.warm_first.append(move.first_new)
            figures.warm_every.append(move.all_new)
            failed_total += move.failed
            current = target
            print(
                f"  warm move {number + 1:>2}: {source} -> {target}  first answer {move.first_new:5.2f} s"
                f"  every answer {move.all_new:5.2f} s  ({move.answers} answers, {move.failed} failed)",
                flush=True,
            )
        created = {p["metadata"]["uid"] for p in stack.pods(selector)} - uids
        answered = len(stream.read())
    print(f"\nalias move back to a warm version -> real pods (pushed, {moves} moves, {replicas} replicas)")
    print(f"{'':<34}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}   (seconds)")
    for label, values in (
        ("first answer from it", figures.warm_first),
        ("every answer from it", figures.warm_every),
    ):
        p50, p95, worst = percentile(values, 0.5), percentile(values, 0.95), max(values)
        print(f"{label:<34}{p50:8.2f}{p95:8.2f}{worst:8.2f}{statistics.mean(values):8.2f}")
    print(
        f"requests through the Service: {answered}, failed: {failed_total}; "
        f"pods created by the moves back: {len(created)}"
    )


def _new_pods_ready(stack: WarmStack, workload: str, kept: set[str], wanted: int) -> FirstSeen:
    """The promoted version's pods other than `kept` (the canary's), read 5 times a second: when the
    first and the last of `wanted` passed their readiness probe (ContainersReady)."""

    def probed(pods: list[dict[str, Any]]) -> list[bool]:
        conditions = [p["status"].get("conditions") or () for p in pods if p["metadata"]["name"] not in kept]
        ready = {"type": "ContainersReady", "status": "True"}
        return [any(ready.items() <= c.items() for c in on) for on in conditions]

    return FirstSeen(
        lambda: stack.pods(f"aliasroll.io/workload={workload}"),
        {"first": lambda pods: any(probed(pods)), "last": lambda pods: sum(probed(pods)) >= wanted},
        every=0.2,
    )


def promotion(stack: WarmStack, figures: WarmFigures) -> None:
    """10 replicas, a canary at a fixed 20 % (2 of its pods, warm and routed); @production moves to the
    canary's version (pushed): seconds to every answer from it, beside one cold start measured in the
    same move (the other 8 pods of the promoted version, started in parallel, the last passing its
    probe)."""
    from examples.sentiment.register import register_version

    url = stack.server.url
    v1 = register_version(url, PROMOTION_MODEL, variant="v1", alias="production")
    v2 = register_version(url, PROMOTION_MODEL, variant="v2", alias="canary")
    stack.apply(
        PROMOTION, PROMOTION_MODEL, PROMOTED_REPLICAS, canary={"alias": "canary", "weight": CANARY_WEIGHT}
    )
    figures.resources.append(PROMOTION)
    stack.wait(PROMOTION, lambda found: _serving(found, v1, v2), f"Ready at {v1} + canary {v2}", timeout=600)
    workload = f"{PROMOTION}-v{v2}"
    canary = {p["metadata"]["name"] for p in stack.pods(f"aliasroll.io/workload={workload}")}
    wanted = PROMOTED_REPLICAS - len(canary)
    with stack.stream(PROMOTION) as stream, _new_pods_ready(stack, workload, canary, wanted) as cold:
        time.sleep(2)
        moved = stack.move(PROMOTION_MODEL, v2)
        move = settle(stream, moved, v2, timeout=600)
        deadline = time.monotonic() + 120
        while "last" not in cold.first and time.monotonic() < deadline:
            time.sleep(0.2)
    if "last" not in cold.first:
        raise SystemExit(f"the promoted version's {wanted} new pods were not seen ready")
    kept = canary <= {p["metadata"]["name"] for p in stack.pods(f"aliasroll.io/workload={workload}")}
    figures.promoted, figures.promotion_cold = move.all_new, cold.first["last"] - moved
    print(
        f"\npromotion of a warm canary ({PROMOTED_REPLICAS} replicas, canary {CANARY_WEIGHT} %: "
        f"{len(canary)} pods; pushed): first answer {move.first_new:.2f} s, every answer from v{v2} "
        f"{move.all_new:.2f} s after the move; one cold start (its {wanted} new pods in parallel): first "
        f"ready {cold.first['first'] - moved:.2f} s, last {figures.promotion_cold:.2f} s; "
        f"{move.answers} requests, {move.failed} failed; the canary's pods kept: {kept}",
        flush=True,
    )


def production(stack: WarmStack, model: str) -> str | None:
    """@production of `model` in MLflow."""
    return stack.client.get_registered_model(model).aliases.get("production")


def _bake_states(stack: WarmStack) -> FirstSeen:
    """status.bake read 5 times a second: when it started (the baked version takes every request) and
    when it said Failed."""

    def bake() -> dict[str, Any]:
        return dict((stack.mdep(BAKE).get("status") or {}).get("bake") or {})

    return FirstSeen(
        bake,
        {"started": lambda b: bool(b.get("startedAt")), "failed": lambda b: b.get("phase") == "Failed"},
        every=0.2,
    )


def failing_bake(stack: WarmStack, figures: WarmFigures) -> None:
    """@production moves (pushed) from a good version to one failing 30 % of its requests; the bake
    (interval 5 s, failureLimit 1, errorRate maxPercent 5) fails, the operator moves @production back
    in MLflow and rolls back to the warm version: seconds from the first reading that could fail to
    @production back in MLflow and to every answer from the previous version."""
    from examples.sentiment.register import register_version

    v1 = register_version(stack.server.url, BAKE_MODEL, variant="v1", alias="production")
    v2 = log_misbehaving(stack.server.url, BAKE_MODEL, fail_share=FAIL_SHARE)
    stack.apply(BAKE, BAKE_MODEL, 2, rollback=BAKE_SPEC)
    figures.resources.append(BAKE)
    stack.wait(BAKE, lambda found: _serving(found, v1), f"Ready at {v1}", timeout=300)
    with stack.stream(BAKE) as stream, _bake_states(stack) as states:
        time.sleep(2)
        moved = stack.move(BAKE_MODEL, v2)
        deadline = time.monotonic() + 300
        back = None
        while back is None and time.monotonic() < deadline:
            if "started" in states.first and production(stack, BAKE_MODEL) == v1:
                back = time.monotonic()
            time.sleep(0.1)
        if back is None or "started" not in states.first:
            raise SystemExit(f"the bake did not move @production back; see {stack.operator.log_path}")
        first_possible = states.first["started"] + BAKE_INTERVAL
        returned = settle(stream, first_possible, v1, timeout=120)
        answers = stream.since(moved)
    deliberate = sum(a["status"] == 500 and a.get("version") == v2 for a in answers)
    others = sum(a["status"] != 200 for a in answers) - deliberate
    figures.bake_back, figures.bake_every = back - first_possible, returned.all_new
    print(
        f"\nfailing bake (v{v2} fails {FAIL_SHARE:.0%} of its requests; interval {BAKE_INTERVAL}s, "
        f"failureLimit 1, pushed): v{v2} took every request {states.first['started'] - moved:.2f} s after "
        f"the move (cold); from the first reading that could fail (+{BAKE_INTERVAL} s): status.bake Failed "
        f"seen {states.first.get('failed', float('nan')) - first_possible:.2f} s, @production back at "
        f"v{v1} in MLflow {figures.bake_back:.2f} s, every answer from v{v1} {figures.bake_every:.2f} s "
        f"(bound: interval + 2 s = {BAKE_INTERVAL + 2} s); {len(answers)} requests, {deliberate} of "
        f"v{v2}'s deliberate 500s, "
        f"{others} other failures",
        flush=True,
    )


def container_memory(pod: dict[str, Any]) -> tuple[int, int] | None:
    """(working set, rss) in bytes of the pod's containers, summed, from their cgroups on this
    machine (MEMORY_SOURCE); None when a container's cgroup is not found."""
    uid = pod["metadata"]["uid"]
    working_set = rss = 0
    for status in pod["status"].get("containerStatuses") or ():
        container = (status.get("containerID") or "").rpartition("//")[2]
        if not container:
            return None
        below = f"kubepods/**/pod{uid}/{container}"
        found = glob.glob(f"/sys/fs/cgroup/memory/*/{below}", recursive=True)
        found += glob.glob(f"/sys/fs/cgroup/*/{below}/memory.current", recursive=True)
        if not found:
            return None
        where = Path(found[0].removesuffix("/memory.current"))
        stat = dict(line.split() for line in (where / "memory.stat").read_text().splitlines())
        if (where / "memory.usage_in_bytes").exists():  # cgroup v1
            usage = int((where / "memory.usage_in_bytes").read_text())
            working_set += usage - int(stat.get("total_inactive_file", 0))
            rss += int(stat.get("total_rss", 0))
        else:  # cgroup v2
            usage = int((where / "memory.current").read_text())
            working_set += usage - int(stat.get("inactive_file", 0))
            rss += int(stat.get("anon", 0))
    return working_set, rss


def _mib(values: list[int]) -> str:
    return f"{sum(values) / 2**20:.0f} MiB" if values else "-"


CostRow = tuple[str, int, int, list[int], list[int], list[int]]


def warm_cost(stack: WarmStack, names: list[str]) -> list[CostRow]:
    """Per ModelDeployment: (name, warm pods held, maxWarm x floor, the warm pods' working sets and
    rss, the production pods' working sets), counted from the cluster: the pods of its Deployments
    labelled aliasroll.io/role=warm."""
    rows = []
    for name in names:
        spec = stack.mdep(name).get("spec") or {}
        rollback = spec.get("rollback") or {}
        bound = int(rollback.get("maxWarm", 1)) * int(rollback.get("floor", spec.get("replicas", 1)))
        held: dict[str, list[dict[str, Any]]] = {"warm": [], "production": []}
        for role, pods in held.items():
            selector = f"{OWNER}={name},{ROLE}={role}"
            for found in stack.kubectl_json("get", "deployments", "-l", selector).get("items") or ():
                labels = found["spec"]["selector"]["matchLabels"]
                pods += stack.pods(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        warm = [m for p in held["warm"] if (m := container_memory(p)) is not None]
        production = [m[0] for p in held["production"] if (m := container_memory(p)) is not None]
        rows.append((name, len(held["warm"]), bound, [m[0] for m in warm], [m[1] for m in warm], production))
    return rows


def report_cost(rows: list[CostRow]) -> None:
    print("\nwhat version mode holds: warm pods per ModelDeployment and their memory")
    print(f"  memory read from {MEMORY_SOURCE}")
    print(
        f"{'ModelDeployment':<18}{'warm pods':>10}{'maxWarm x floor':>17}{'working set':>13}{'rss':>10}"
        f"{'per warm pod':>14}{'per production pod':>20}{'ratio':>7}"
    )
    for name, pods, bound, working, rss, production in rows:
        per_warm = statistics.mean(working) / 2**20 if working else float("nan")
        per_production = statistics.mean(production) / 2**20 if production else float("nan")
        print(
            f"{name:<18}{pods:>10}{bound:>17}{_mib(working):>13}{_mib(rss):>10}"
            f"{per_warm:>10.0f} MiB{per_production:>16.0f} MiB{per_warm / per_production:>6.2f}x"
        )


def report_warm(figures: WarmFigures) -> None:
    """The version-mode part against a cold start, measured in the same run."""
    rows: list[tuple[str, float, str, float]] = []
    if figures.warm_every and figures.cold_forward is not None:
        cold = figures.cold_forward
        for label, value in (
            ("rollback to warm, every answer p50", percentile(figures.warm_every, 0.5)),
            ("rollback to warm, every answer p95", percentile(figures.warm_every, 0.95)),
        ):
            rows.append((label, value, "the cold move forward, every answer", cold))
    if figures.promoted is not None and figures.promotion_cold is not None:
        rows.append(
            (
                f"promotion ({PROMOTED_REPLICAS} replicas), every answer",
                figures.promoted,
                "one cold start (last new pod ready)",
                figures.promotion_cold,
            )
        )
    if figures.bake_back is not None and figures.bake_every is not None:
        bound = BAKE_INTERVAL + 2.0
        against = "bound: interval + 2 s"
        rows.append(("failing bake, @production back in MLflow", figures.bake_back, against, bound))
        rows.append(("failing bake, every answer from previous", figures.bake_every, against, bound))
    print(f"\nversion mode on the real node ({figures.replicas or '-'} replicas for the rollbacks; seconds)")
    print(f"{'':<44}{'warm':>8}   {'against':<38}{'':>8}   ratio (against / warm)")
    for label, value, against, other in rows:
        print(f"{label:<44}{value:8.2f}   {against:<38}{other:8.2f}{other / value:8.2f}x")


def version_mode(cluster: LocalCluster, server: MlflowServer, work: Path, args: argparse.Namespace) -> None:
    """The version-mode parts asked for (rollbacks to a warm version, the promotion of a warm canary,
    a failing bake), one operator for all, then what they hold warm; the table."""
    figures = WarmFigures()
    with warm_stack(cluster, server, work) as stack:
        if "warm" in args.parts and args.warm_moves:
            real_warm_moves(stack, args.warm_moves, args.real_replicas, figures)
        if "promotion" in args.parts:
            promotion(stack, figures)
        if "bake" in args.parts:
            failing_bake(stack, figures)
        if figures.resources:
            report_cost(warm_cost(stack, figures.resources))
    report_warm(figures)


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
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="on the real node, version mode only (spec.rollback: the warm moves, the promotion, the bake)",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="version mode: the moves back to a warm version (alone, or with the parts named)",
    )
    parser.add_argument(
        "--promotion",
        action="store_true",
        help=f"version mode: the promotion of a warm canary, {PROMOTED_REPLICAS} replicas (alone, or ...)",
    )
    parser.add_argument(
        "--bake", action="store_true", help="version mode: a failing bake's rollback (alone, or ...)"
    )
    parser.add_argument("--push-moves", type=int, default=20, help="alias moves pushed by a webhook (kwok)")
    parser.add_argument("--push-poll", default="60s", help="pollInterval of the pushed resource")
    args = parser.parse_args()
    # Each version-mode part alone (--warm, --promotion, --bake, implying --warm-only), else all three.
    named = [part for part in ("warm", "promotion", "bake") if getattr(args, part)]
    args.parts = named or ["warm", "promotion", "bake"]
    args.warm_only = args.warm_only or bool(named)
    return args


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
            version_mode(cluster, server, work, args)
    finally:
        if operator is not None:
            operator.stop()
        server.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
