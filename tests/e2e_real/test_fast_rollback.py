"""Version mode (spec.rollback, docs/rollback.md) on real pods: a version that leaves @production stays
warm (its pods run, unrouted by their readiness gate `aliasroll.io/routed`), and moving @production
back to it only flips gates: no pod is created, and the event FastRollback says how long it took.

The smoke test runs in the tier. The proofs (a rollback to a warm version timed over many moves beside
today's cold rollback, and the promotion of a warm canary of 10 replicas) time the Service's answers
and are run in a session of their own, on a machine doing nothing else:

    ALIASROLL_REQUIRE_REAL_NODE=1 ALIASROLL_E2E_REAL_RUN=fast-rollback \\
        .venv/bin/pytest tests/e2e_real/test_fast_rollback.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
from examples.sentiment.register import register_version
from harness import Kube, condition, wait_events, wait_for
from realstack import NAME, RealStack

from support.answers import Move, Stream, settle

WINDOW = {"window": "30m"}


def deployments(stack: RealStack) -> set[str]:
    return {d["metadata"]["name"] for d in stack.kube.list("deployments", stack.namespace)}


def pod_uids(stack: RealStack, version: str | None = None) -> dict[str, str]:
    """name -> uid of the resource's pods that are not stopping (of one version's Deployment)."""
    selector = f"aliasroll.io/modeldeployment={NAME}"
    if version is not None:
        selector = f"aliasroll.io/workload={NAME}-v{version}"
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in stack.pods(selector)
        if not p["metadata"].get("deletionTimestamp")
    }


def warm(stack: RealStack) -> list[dict[str, Any]]:
    return list(((stack.resource() or {}).get("status") or {}).get("warm") or [])


def warm_at(stack: RealStack, version: str, timeout: float = 120) -> dict[str, Any]:
    """status.warm's entry for `version`, once it is warm (unrouted, with an end)."""
    return wait_for(
        lambda: next(
            (w for w in warm(stack) if w["version"] == version and not w["routed"] and w.get("until")), None
        ),
        timeout=timeout,
        what=f"version {version} warm in status.warm",
    )


def test_rollback_to_a_warm_version_creates_no_pod(stack: RealStack) -> None:
    """@production v1 -> v2 (cold: v2's Deployment starts), then back to v1 (warm: gates only)."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2")
    stack.deploy(replicas=2, rollback=WINDOW)
    stack.ready(v1)
    assert f"{NAME}-v{v1}" in deployments(stack)
    v1_pods = pod_uids(stack, v1)
    assert len(v1_pods) == 2, v1_pods

    stack.point("production", v2)
    stack.ready(v2)
    warm_at(stack, v1)
    assert {f"{NAME}-v{v1}", f"{NAME}-v{v2}"} <= deployments(stack)
    assert pod_uids(stack, v1) == v1_pods, "the version left kept its pods"
    before = pod_uids(stack)

    stack.point("production", v1)
    stack.ready(v1)
    events = wait_events(stack.kube, stack.namespace, NAME, "FastRollback", timeout=60)
    warm_at(stack, v2)
    after = pod_uids(stack)
    assert pod_uids(stack, v1) == v1_pods, "the rollback kept v1's pods"
    assert set(after.values()) <= set(before.values()), (
        f"pods created by the rollback: {set(after) - set(before)}"
    )
    fast = [message for _, reason, message in events if reason == "FastRollback"]
    assert fast, events
    assert f"version {v1}" in fast[0], fast
    # v2's pods leave the endpoints a moment after their gate goes False.
    wait_for(lambda: all(stack.ask()[1] == v1 for _ in range(5)), timeout=30, what="every answer from v1")


# ------------------------------------------------------------------------------------------ the proofs

RUN = os.environ.get("ALIASROLL_E2E_REAL_RUN", "e2e-real")
proof = pytest.mark.skipif(
    not RUN.startswith("fast-rollback"),
    reason="the timed proofs run in a session of their own: ALIASROLL_E2E_REAL_RUN=fast-rollback",
)
RATE = 50.0  # requests per second through a Service, each on a new connection
SETTLED = 3.0  # seconds of answers all from the target version after which a move counts as over
WARM_MOVES = 20  # p95 of 20 is the 19th: of 10 it would be the slowest
COLD_MOVES = 2
REPLICAS = 4
PUSHED = {"pollInterval": "60s"}  # moves arrive by webhook; the poll is far away


class Watcher:
    """Polls the resource's pods and its Service's EndpointSlices (10 times a second, a thread of
    its own) and keeps when each pod was first seen with its gate True/False, Ready or not, and its
    endpoint ready or not: `when(kind, pods, value, after)`, the moment all of them were so."""

    def __init__(self, stack: RealStack, owner: str) -> None:
        self.kube = Kube(stack.cluster)
        self.namespace, self.owner = stack.namespace, owner
        self.samples: list[tuple[float, dict[str, dict[str, bool | None]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.kube.close()

    def _run(self) -> None:
        selector = quote(f"kubernetes.io/service-name={self.owner}")
        slices = (
            f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices?labelSelector={selector}"
        )
        while not self._stop.wait(0.1):
            began = time.monotonic()
            try:
                pods = self.kube.list("pods", self.namespace, f"aliasroll.io/modeldeployment={self.owner}")
                _, body, _ = self.kube.api.get(slices)
            except (OSError, AssertionError):
                continue
            now = (began + time.monotonic()) / 2  # the reads' middle: within their span of the truth
            endpoints = {
                e["targetRef"]["name"]: bool(e.get("conditions", {}).get("ready"))
                for s in (body or {}).get("items") or ()
                for e in s.get("endpoints") or ()
                if e.get("targetRef")
            }
            seen: dict[str, dict[str, bool | None]] = {}
            for pod in pods:
                conditions = {c["type"]: c["status"] == "True" for c in pod["status"].get("conditions") or ()}
                seen[pod["metadata"]["name"]] = {
                    "gate": conditions.get("aliasroll.io/routed"),
                    "ready": conditions.get("Ready", False),
                    "probe": conditions.get("ContainersReady", False),
                    "endpoint": endpoints.get(pod["metadata"]["name"], False),
                }
            self.samples.append((now, seen))

    def when(self, kind: str, pods: set[str], value: bool, after: float) -> float | None:
        """The first sample after `after` where every one of `pods` reads `value` for `kind`."""
        for moment, seen in self.samples:
            if moment >= after and pods and all(seen.get(p, {}).get(kind) is value for p in pods):
                return moment
        return None

    def pods_of(self, version: str) -> set[str]:
        prefix = f"{self.owner}-v{version}-"
        return {name for _, seen in self.samples[-1:] for name in seen if name.startswith(prefix)}


# Inside the node's namespace: kube-proxy's count of iptables syncs (its metrics), 20 times a second;
# a line (CLOCK_MONOTONIC, count) whenever it changes.
PROXY_SYNCS = r"""
import re, sys, time, urllib.request
last = None
while True:
    try:
        text = urllib.request.urlopen("http://127.0.0.1:10249/metrics", timeout=1).read().decode()
        name = r'kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="IPv4"\}'
        found = re.search("^" + name + r" (\S+)", text, re.M)
        count = float(found.group(1)) if found else None
    except OSError:
        count = None
    if count is not None and count != last:
        print(time.monotonic(), count, flush=True)
        last = count
    time.sleep(0.05)
"""


class ProxySyncs:
    """When kube-proxy finished each sync of its rules (CLOCK_MONOTONIC, within 50 ms): kube-proxy
    syncs at most once a second after a burst of two (its minSyncPeriod, 1 s by default), so an
    endpoint change that comes right after others waits for it."""

    def __init__(self, stack: RealStack) -> None:
        self.process = subprocess.Popen(
            stack.node.nsenter_argv(sys.executable, "-c", PROXY_SYNCS),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.moments: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.moments.append(float(line.split()[0]))

    def __enter__(self) -> ProxySyncs:
        self._reader.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def between(self, start: float, end: float) -> list[float]:
        return [moment for moment in self.moments[1:] if start <= moment <= end]


def move_and_time(
    stack: RealStack, model: str, stream: Stream, target: str, *, timeout: float
) -> tuple[float, Move]:
    """Moves `model`'s @production to `target` (pushed by the webhook) and waits until SETTLED
    seconds of answers come from it only; (when the move was made, the timing)."""
    moved = time.monotonic()
    stack.registry.set_registered_model_alias(model, "production", target)
    return moved, settle(stream, moved, target, timeout=timeout)


def load_through(stack: RealStack, address: str, name: str) -> Stream:
    """RATE requests a second through the Service at `address`, its answers in tmp/name.jsonl."""
    return Stream(stack.node, address, stack.tmp / f"{name}.jsonl", rate=RATE)


def figures(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return f"p50 {p50:.2f} s  p95 {p95:.2f} s  max {ordered[-1]:.2f} s  (n={len(ordered)})"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def breakdown(
    watcher: Watcher,
    moved: float,
    source: set[str],
    target: set[str],
    move: Move,
    syncs: ProxySyncs | None = None,
) -> dict[str, Any]:
    """From the move: the target's gates True, its pods Ready, its endpoints ready; the source's
    gates False, pods not Ready, endpoints not ready; first and last (all new) answers."""

    def since(moment: float | None) -> float | None:
        return None if moment is None else round(moment - moved, 2)

    return {
        "target gate True": since(watcher.when("gate", target, True, moved)),
        "target Ready": since(watcher.when("ready", target, True, moved)),
        "target endpoints ready": since(watcher.when("endpoint", target, True, moved)),
        "source gate False": since(watcher.when("gate", source, False, moved)),
        "source not Ready": since(watcher.when("ready", source, False, moved)),
        "source endpoints not ready": since(watcher.when("endpoint", source, False, moved)),
        "first answer": round(move.first_new, 2),
        "all answers": round(move.all_new, 2),
        "kube-proxy syncs": [since(m) for m in syncs.between(moved, moved + move.all_new + 0.5)]
        if syncs
        else None,
    }


def second_resource(stack: RealStack, name: str, model: str, **spec: Any) -> str:
    """Another ModelDeployment in the test's namespace, of another model; its Service's ClusterIP once
    it answers."""
    manifest = stack.manifest(**spec)
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"] = {"name": model}
    stack.apply(manifest)
    wait_for(
        lambda: (
            (found := stack.kube.get("mdep", name, stack.namespace)) is not None
            and condition(found, "Ready") == ("True", "Serving")
        ),
        timeout=240,
        what=f"{name} Ready",
    )
    service = stack.kube.get("service", name, stack.namespace)
    assert service is not None
    return str(service["spec"]["clusterIP"])


@proof
@pytest.mark.usefixtures("push")
def test_a_rollback_to_a_warm_version_takes_seconds(stack: RealStack) -> None:
    """Under a steady load, @production alternates WARM_MOVES times between two warm versions (each
    move pushed by the MLflow webhook): every answer comes from the target within 2 s at the 95th
    percentile, no request fails, no pod is created. Beside it, the same resource without
    spec.rollback (today's track Deployments) rolls back cold COLD_MOVES times."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2")
    cold_model = f"{stack.model}-cold"
    c1 = register_version(stack.mlflow.url, cold_model, variant="v1", alias="production")
    c2 = register_version(stack.mlflow.url, cold_model, variant="v2")
    stack.deploy(replicas=REPLICAS, rollback=WINDOW, registry={"trackingUri": stack.tracking_uri, **PUSHED})
    stack.ready(v1)
    cold_address = second_resource(
        stack, "cold", cold_model, replicas=REPLICAS, registry={"trackingUri": stack.tracking_uri, **PUSHED}
    )

    warm_moves: list[Move] = []
    with (
        Watcher(stack, NAME) as watcher,
        ProxySyncs(stack) as syncs,
        load_through(stack, stack.address, "warm") as stream,
    ):
        # The first move is forward (cold: v2's pods start); v1 stays warm.
        _, first = move_and_time(stack, stack.model, stream, v2, timeout=180)
        print(f"\nwarm resource, forward to v{v2} (cold): all new {first.all_new:.2f} s", flush=True)
        warm_at(stack, v1)
        uids = pod_uids(stack)
        assert len(uids) == 2 * REPLICAS, uids
        current = v2
        for number in range(WARM_MOVES):
            time.sleep(random.uniform(0.5, 1.5))
            target, source = (v1, v2) if current == v2 else (v2, v1)
            source_pods, target_pods = watcher.pods_of(source), watcher.pods_of(target)
            moved, move = move_and_time(stack, stack.model, stream, target, timeout=60)
            warm_at(stack, source, timeout=60)
            move.steps = breakdown(watcher, moved, source_pods, target_pods, move, syncs)
            warm_moves.append(move)
            current = target
            print(
                f"  warm move {number + 1:>2} to v{target}: {move.steps}"
                f"  ({move.answers} answers, {move.failed} failed)",
                flush=True,
            )
        assert pod_uids(stack) == uids, "pods were created or replaced by the moves to warm versions"
        warm_failed = stream.failed()
        warm_answers = len(stream.read())

    cold_moves: list[Move] = []
    with load_through(stack, cold_address, "cold") as stream:
        current = c1
        for number in range(COLD_MOVES):
            time.sleep(random.uniform(0.5, 1.5))
            target = c2 if current == c1 else c1
            _, move = move_and_time(stack, cold_model, stream, target, timeout=240)
            cold_moves.append(move)
            current = target
            print(
                f"  cold move {number + 1}: to v{target}: first {move.first_new:.2f} s, "
                f"all {move.all_new:.2f} s  ({move.answers} answers, {move.failed} failed)",
                flush=True,
            )
        cold_failed = stream.failed()

    events = [
        message for _, reason, message in stack.kube.events(stack.namespace, NAME) if reason == "FastRollback"
    ]
    warm_all, cold_all = [m.all_new for m in warm_moves], [m.all_new for m in cold_moves]
    ratio = statistics.median(cold_all) / statistics.median(warm_all)
    print(
        f"\nrollback to a warm version ({WARM_MOVES} moves, {REPLICAS} replicas, pushed): all answers "
        f"{figures(warm_all)}; first answer {figures([m.first_new for m in warm_moves])}; "
        f"{warm_answers} requests, {len(warm_failed)} failed; pods unchanged ({len(uids)} UIDs)"
        f"\ncold rollback (track mode, {COLD_MOVES} moves, {REPLICAS} replicas, pushed): all answers from it "
        f"{figures(cold_all)}; {len(cold_failed)} failed"
        f"\nratio (median cold / median warm): {ratio:.1f}x"
        f"\nFastRollback events: {len(events)}; {events[-1] if events else ''}",
        flush=True,
    )
    assert not warm_failed, warm_failed[:5]
    assert not cold_failed, cold_failed[:5]
    assert len(events) >= WARM_MOVES, events
    assert p95(warm_all) < 2.0, "\n".join(str(m.steps) for m in warm_moves)


PROMOTED_REPLICAS = 10
CANARY_WEIGHT = 20


@proof
@pytest.mark.usefixtures("push")
def test_a_promotion_gives_production_to_the_canarys_warm_pods(stack: RealStack) -> None:
    """10 replicas, a canary at a fixed 20 % (replicas router: 2 of its pods); @production moves to
    the canary's version (pushed): its pods take production's requests at once, production's other 8
    pods start in parallel, and every answer comes from it within one cold start (those pods') plus
    2 s of the move, no request failing and the canary's pods kept."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2", alias="canary")
    stack.deploy(
        replicas=PROMOTED_REPLICAS,
        rollback=WINDOW,
        canary={"alias": "canary", "weight": CANARY_WEIGHT},
        registry={"trackingUri": stack.tracking_uri, **PUSHED},
    )
    stack.ready(v1, v2, timeout=420)
    canary_pods = pod_uids(stack, v2)
    assert len(canary_pods) == PROMOTED_REPLICAS * CANARY_WEIGHT // 100, canary_pods
    with Watcher(stack, NAME) as watcher, load_through(stack, stack.address, "promotion") as stream:
        time.sleep(2)
        before = stream.read()[:]
        versions = {a.get("version") for a in before}
        source = watcher.pods_of(v1)
        moved, move = move_and_time(stack, stack.model, stream, v2, timeout=300)
        stack.ready(v2, timeout=60)
        promoted = watcher.pods_of(v2)
        new = promoted - set(canary_pods)
        # One cold start, measured in this run: from the move until the last of the promoted version's
        # new pods passes its readiness probe (they start in parallel); and the first of them.
        cold_last = watcher.when("probe", new, True, moved)
        cold_first = min(
            (m for p in new if (m := watcher.when("probe", {p}, True, moved)) is not None), default=None
        )
        failed = stream.failed()
        answers = len(stream.read())
    assert cold_last is not None, "the new pods' readiness was not seen"
    assert cold_first is not None, "the new pods' readiness was not seen"
    cold_start = cold_last - moved
    steps = breakdown(watcher, moved, source, promoted, move)
    print(
        f"\npromotion of a warm canary ({PROMOTED_REPLICAS} replicas, canary {CANARY_WEIGHT} %, pushed): "
        f"first answer {move.first_new:.2f} s, every answer from v{v2} {move.all_new:.2f} s after the move; "
        f"one cold start (its {len(new)} new pods, in parallel): first {cold_first - moved:.2f} s, "
        f"last {cold_start:.2f} s; bound {cold_start + 2:.2f} s; {answers} requests, {len(failed)} failed; "
        f"before the move answers came from {sorted(versions, key=str)}\n  {steps}",
        flush=True,
    )
    assert not failed, failed[:5]
    assert pod_uids(stack, v2).items() >= canary_pods.items(), "the canary's pods were replaced"
    assert len(new) == PROMOTED_REPLICAS - len(canary_pods), new
    assert move.all_new <= cold_start + 2.0, steps
