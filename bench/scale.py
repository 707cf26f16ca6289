"""Benchmark: one operator, 1,000 ModelDeployments over 50 models in 10 namespaces, on the kwok node.

On 2 cores the control plane itself is the floor, so the same run measures it first: the same
cluster makes the same 1,000 Deployments and Services (the operator's planner renders them, without
owners) available from a plain `kubectl apply --server-side`. Then, with those deleted again (both
phases start from the same empty cluster):

  ready      1,000 ModelDeployments applied the same way -> every one Ready (vs the floor), and each
             one's creation -> Ready from the API server's own timestamps
  memory     the operator's peak RSS (VmHWM)
  registry   registry calls per poll interval, in a quiet stretch (vs the number of models)
  moves      @production of one model moved at a random point of the poll cycle -> the pod template
             of all 20 of its resources pinned to the new version (vs the poll interval)
  restart    the operator stopped and started again -> every resource has had a pass and the queue
             is empty; writes to the API server meanwhile, counted by the API server

    make bench-scale
    .venv/bin/python bench/scale.py --models 10 --per-model 10 --namespaces 5   # a smaller try

Goals (issue 12): all Ready within 1.5x the floor and within 60 s of their creation, RSS < 300 MB,
registry calls per poll = models (not resources), a move reaching all its resources within one
poll, a restart converging with no writes.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import argument_parser, exit_on_sigterm, install_crd, percentile, prelude

prelude("localenv", "tests", "tests/e2e", "")

import harness  # noqa: E402
from harness import ApiReader  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from aliasroll.kube.observe import reduce_deployment  # noqa: E402
from aliasroll.labels import LABEL_MANAGED_BY  # noqa: E402
from aliasroll.planning import planner  # noqa: E402
from aliasroll.planning.state import AliasTarget, ObservedState, RegistryView  # noqa: E402
from aliasroll.planning.workloads import WorkloadDefaults  # noqa: E402
from aliasroll.registry.types import VersionInfo  # noqa: E402
from aliasroll.spec import ResourceRef, parse_spec  # noqa: E402
from localcluster import LocalCluster  # noqa: E402
from mlflowserver import MlflowServer, free_port  # noqa: E402
from operatorprocess import OperatorProcess, Samples  # noqa: E402

IMAGE = "bench:1"
OPERATOR_NAMESPACE = "aliasroll-system"
# What the operator writes to the API server; kwok's node heartbeats (leases, nodes) are not in it.
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
READ_VERBS = {"GET", "LIST", "WATCH"}
REGISTRY_WRITES = {"set_alias", "delete_alias", "set_version_tags"}
OPERATOR_RESOURCES = {"deployments", "services", "poddisruptionbudgets", "modeldeployments", "events"}
READY_FACTOR_GOAL = 1.5
READY_SECONDS_GOAL = 60.0
RSS_GOAL_MB = 300.0
#: The floor's objects live in namespaces of their own, deleted before the operator runs.
FLOOR_PREFIX = "floor-"
QUIET_AFTER_CLEARING = 10.0


class Layout:
    """Which resource serves which model, in which namespace: the models' resources spread evenly."""

    def __init__(self, *, models: int, per_model: int, namespaces: int) -> None:
        self.models = [f"scale-model-{m:03d}" for m in range(models)]
        self.namespaces = [f"scale-{n:02d}" for n in range(namespaces)]
        self.resources: list[tuple[str, str, str]] = []  # (namespace, name, model)
        for m, model in enumerate(self.models):
            for r in range(per_model):
                namespace = self.namespaces[(m * per_model + r) % namespaces]
                self.resources.append((namespace, f"m{m:03d}-r{r:02d}", model))

    def of_model(self, model: str) -> list[tuple[str, str]]:
        return [(ns, name) for ns, name, m in self.resources if m == model]


def model_deployment(
    namespace: str, name: str, model: str, *, tracking_uri: str, poll: str
) -> dict[str, Any]:
    manifest = harness.model_deployment(
        name, model, tracking_uri, replicas=1, registry={"trackingUri": tracking_uri, "pollInterval": poll}
    )
    manifest["metadata"]["namespace"] = namespace
    return manifest


def floor_objects(layout: Layout, *, tracking_uri: str, poll: str) -> list[Any]:
    """The Deployments and Services the operator would write for the same resources, without owners."""
    objects: list[Any] = []
    now = datetime.now(UTC)
    for namespace, name, model in layout.resources:
        resource = model_deployment(namespace, name, model, tracking_uri=tracking_uri, poll=poll)
        info = VersionInfo(model=model, version="1", status="READY", run_id=None, source=None)
        plan = planner.plan(
            owner=ResourceRef(namespace=FLOOR_PREFIX + namespace, name=name, uid="floor"),
            spec=parse_spec(resource["spec"]),
            view=RegistryView(
                model=model, production=AliasTarget(alias="production", version="1", info=info)
            ),
            observed=ObservedState(),
            previous_status={},
            now=now,
            defaults=WorkloadDefaults(image=IMAGE),
        )
        for obj in plan.objects:
            obj = json.loads(json.dumps(obj))
            obj["metadata"].pop("ownerReferences", None)
            # Not the operator's: its watches (filtered by this label) leave the floor's objects out.
            obj["metadata"]["labels"].pop(LABEL_MANAGED_BY, None)
            template = obj.get("spec", {}).get("template", {}).get("metadata", {})
            template.get("labels", {}).pop(LABEL_MANAGED_BY, None)
            objects.append(obj)
    return objects


def apply_all(cluster: LocalCluster, objects: list[Any], work: Path, label: str) -> float:
    """One `kubectl apply --server-side` of every object, as a GitOps tool or a user would; its seconds."""
    path = work / f"{label}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    started = time.monotonic()
    cluster.kubectl("apply", "--server-side", "--field-manager=bench", "-f", str(path), timeout=1800)
    return time.monotonic() - started


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def listed(api: ApiReader, path: str, namespaces: set[str]) -> Iterator[dict[str, Any]]:
    status, body, raw = api.get(path)
    if status != 200 or body is None:
        raise SystemExit(f"GET {path}: {status} {raw[:300]}")
    for item in body.get("items", []):
        if item["metadata"]["namespace"] in namespaces:
            yield item


def events_by_reason(api: ApiReader, namespaces: set[str]) -> dict[str, int]:
    """The ModelDeployments' events, by reason, each as often as it happened (a repeat folds into
    its first event's count)."""
    counts: dict[str, int] = {}
    for event in listed(api, "/api/v1/events", namespaces):
        if event.get("involvedObject", {}).get("kind") == "ModelDeployment":
            reason = str(event.get("reason"))
            counts[reason] = counts.get(reason, 0) + int(event.get("count") or 1)
    return counts


def condition_since(obj: dict[str, Any], type_: str) -> float | None:
    """When the condition last became True, or None while it is not True."""
    for cond in obj.get("status", {}).get("conditions") or ():
        if cond.get("type") == type_ and cond.get("status") == "True":
            return parse_time(cond["lastTransitionTime"])
    return None


def wait_all(
    api: ApiReader, path: str, namespaces: set[str], *, count: int, type_: str, timeout: float
) -> list[tuple[float, float]]:
    """Lists every 2 s until `count` objects carry condition `type_`; (created, became true) of each."""
    deadline = time.monotonic() + timeout
    while True:
        times = [
            (parse_time(item["metadata"]["creationTimestamp"]), since)
            for item in listed(api, path, namespaces)
            if (since := condition_since(item, type_)) is not None
        ]
        if len(times) >= count:
            return times
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {len(times)} of {count} {path.rsplit('/', 1)[-1]} {type_}")
        time.sleep(2.0)


class Operator:
    """The operator as a process (its ServiceAccount's token), its metrics, and its peak RSS."""

    def __init__(self, kubeconfig: Path, work: Path) -> None:
        self.process = OperatorProcess(
            kubeconfig=kubeconfig,
            log_path=work / "operator.log",
            env={"ALIASROLL_SERVING_IMAGE": IMAGE, "ALIASROLL_METRICS_LISTEN": f"127.0.0.1:{free_port()}"},
        )

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def peak_rss_mb(self) -> float:
        pid = self.process.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise SystemExit("no VmHWM for the operator")

    def metrics(self) -> Samples:
        return self.process.metrics()


def total(metrics: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in metrics.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def registry_calls(metrics: Samples) -> dict[str, float]:
    calls: dict[str, float] = {}
    for (sample, labels), value in metrics.items():
        if sample == "aliasroll_registry_calls_total":
            call = dict(labels)["call"]
            calls[call] = calls.get(call, 0.0) + value
    return calls


def apiserver_requests(api: ApiReader, verbs: set[str] = WRITE_VERBS) -> dict[tuple[str, str], float]:
    status, _, raw = api.get("/metrics")
    if status != 200:
        raise SystemExit(f"GET /metrics of the API server: {status}")
    writes: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(raw):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            verb, resource = sample.labels.get("verb", ""), sample.labels.get("resource", "")
            if sample.name == "apiserver_request_total" and verb in verbs and resource in OPERATOR_RESOURCES:
                key = (
                    verb,
                    resource
                    + (f"/{sample.labels['subresource']}" if sample.labels.get("subresource") else ""),
                )
                writes[key] = writes.get(key, 0.0) + sample.value
    return writes


def pinned_versions(api: ApiReader, resources: list[tuple[str, str]]) -> list[str | None]:
    versions: list[str | None] = []
    for namespace, name in resources:
        status, body, _ = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-production")
        workload = reduce_deployment(body) if status == 200 and body else None
        versions.append(workload.version if workload else None)
    return versions


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return sum(times.get(pid, 0.0) for pid in tree)


def ready_versions(api: ApiReader, resources: list[tuple[str, str]]) -> list[str | None]:
    """The production version each resource's status says is serving, while it is Ready."""
    versions: list[str | None] = []
    for namespace, name in resources:
        status, body, _ = api.get(
            f"/apis/aliasroll.io/v1alpha1/namespaces/{namespace}/modeldeployments/{name}"
        )
        ready = status == 200 and body is not None and condition_since(body, "Ready") is not None
        versions.append(body["status"]["production"]["version"] if ready and body else None)
    return versions


@dataclass
class Figures:
    count: int
    models: int
    namespaces: int
    per_model: int
    poll: float
    floor_apply: float = 0.0
    floor_seconds: float = 0.0
    floor_each: list[float] = field(default_factory=list)
    applied: float = 0.0
    ready_seconds: float = 0.0
    each: list[float] = field(default_factory=list)
    recorded_seconds: float = 0.0  # apply began -> every resource's version tags in MLflow
    per_poll: dict[str, float] = field(default_factory=dict)
    moves: list[float] = field(default_factory=list)
    moves_ready: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    restart_rss_mb: float = 0.0
    converged: float = 0.0
    restart_writes: dict[tuple[str, str], float] = field(default_factory=dict)
    restart_changed: list[str] = field(default_factory=list)
    restart_registry_writes: float = 0.0
    rest_cpu: float = 0.0  # cores the operator used while every resource was at rest
    rest_passes: float = 0.0  # passes a second meanwhile
    floor_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process
    ready_cpu: dict[str, float] = field(default_factory=dict)
    ready_passes: float = 0.0
    ready_writes: dict[tuple[str, str], float] = field(default_factory=dict)
    ready_reads: dict[tuple[str, str], float] = field(default_factory=dict)
    ready_registry: dict[str, float] = field(default_factory=dict)
    ready_events: dict[str, int] = field(default_factory=dict)  # ModelDeployment events by reason


class Run:
    """One run's cluster, registry, operator and API reader, and the phases measured on them."""

    def __init__(self, *, layout: Layout, poll: float, timeout: float, work: Path) -> None:
        self.layout, self.poll, self.timeout, self.work = layout, poll, timeout, work
        self.cluster = LocalCluster(work / "cluster")
        self.server = MlflowServer(work / "mlflow")
        self.api = ApiReader(self.cluster)
        self.operator: Operator | None = None
        self.moved: list[str] = []  # models whose @production now names version 2
        self.kubeconfig = work / "operator-kubeconfig"

    def start(self) -> None:
        from mlflow import MlflowClient

        from support.registry import quick_versions

        print("starting the control plane and the mlflow server ...", flush=True)
        self.cluster.start()
        self.server.start()
        install_crd(self.cluster)
        token = self.cluster.mint_token(OPERATOR_NAMESPACE, "aliasroll", expiration_seconds=3600)
        self.cluster.write_kubeconfig_for_token(self.kubeconfig, token)
        names = [*self.layout.namespaces, *(FLOOR_PREFIX + ns for ns in self.layout.namespaces)]
        namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in names]
        self.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": namespaces})
        )
        self.client = MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)

        def register(model: str) -> None:
            quick_versions(self.client, model, 2)
            self.client.set_registered_model_alias(model, "production", "1")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, self.layout.models))

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.api.close()
        self.server.stop()
        self.cluster.stop()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each part of the system: the control plane's processes, the MLflow
        server, the operator, and kubectl (the bench's finished children)."""
        parts: dict[str, float] = {}
        for pid_file in sorted(self.cluster.pids_dir.glob("*.pid")):
            parts[pid_file.stem] = tree_cpu_seconds(int(pid_file.read_text().split()[0]))
        if self.server.pid is not None:
            parts["mlflow"] = tree_cpu_seconds(self.server.pid)
        if self.operator is not None and self.operator.process.pid is not None:
            parts["operator"] = tree_cpu_seconds(self.operator.process.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        parts["kubectl"] = children.ru_utime + children.ru_stime
        return parts

    @property
    def poll_text(self) -> str:
        return f"{self.poll:g}s"

    def floor(self, figures: Figures) -> None:
        """The control plane alone: the same Deployments and Services from a plain apply."""
        objects = floor_objects(self.layout, tracking_uri=self.server.url, poll=self.poll_text)
        deployments = sum(1 for obj in objects if obj["kind"] == "Deployment")
        print(f"floor: applying {len(objects)} objects ({deployments} Deployments) ...", flush=True)
        began, cpu = time.time(), self.cpu()
        figures.floor_apply = apply_all(self.cluster, objects, self.work, "floor")
        namespaces = {FLOOR_PREFIX + ns for ns in self.layout.namespaces}
        times = wait_all(
            self.api,
            "/apis/apps/v1/deployments",
            namespaces,
            count=deployments,
            type_="Available",
            timeout=self.timeout,
        )
        figures.floor_seconds = max(max(since for _, since in times) - began, 1.0)
        figures.floor_cpu = spent(cpu, self.cpu())
        figures.floor_each = [max(0.0, since - created) for created, since in times]
        print(f"floor: all available {figures.floor_seconds:.1f} s after the apply began", flush=True)
        self.clear_floor(namespaces)

    def clear_floor(self, namespaces: set[str]) -> None:
        """Both phases start from the same empty cluster: left in place, the floor's objects make
        the second phase dearer (a Service's ClusterIP allocation scans every address in use)."""
        began = time.monotonic()
        self.cluster.kubectl("delete", "namespace", "--wait=true", *sorted(namespaces), timeout=1800)
        time.sleep(QUIET_AFTER_CLEARING)  # the controllers' and the garbage collector's tail
        print(f"floor: its namespaces deleted in {time.monotonic() - began:.1f} s", flush=True)

    def ready(self, figures: Figures) -> None:
        """The operator, then the same resources as ModelDeployments, applied the same way."""
        self.operator = Operator(self.kubeconfig, self.work)
        self.operator.start()
        resources = [
            model_deployment(ns, name, model, tracking_uri=self.server.url, poll=self.poll_text)
            for ns, name, model in self.layout.resources
        ]
        print(f"applying {len(resources)} ModelDeployments ...", flush=True)
        cpu, writes = self.cpu(), apiserver_requests(self.api)
        reads = apiserver_requests(self.api, READ_VERBS)
        registry = registry_calls(self.operator.metrics())
        began = time.time()
        figures.applied = apply_all(self.cluster, resources, self.work, "modeldeployments")
        times = self.all_model_deployments("Ready")
        figures.ready_seconds = max(max(since for _, since in times) - began, 1.0)
        figures.each = [max(0.0, since - created) for created, since in times]
        figures.ready_cpu = spent(cpu, self.cpu())
        figures.ready_passes = total(self.operator.metrics(), "aliasroll_passes_total")
        after = apiserver_requests(self.api)
        figures.ready_writes = {
            key: n - writes.get(key, 0.0) for key, n in after.items() if n > writes.get(key, 0.0)
        }
        after = apiserver_requests(self.api, READ_VERBS)
        figures.ready_reads = {
            key: n - reads.get(key, 0.0) for key, n in after.items() if n > reads.get(key, 0.0)
        }
        figures.ready_registry = spent(registry, registry_calls(self.operator.metrics()))
        figures.ready_events = events_by_reason(self.api, set(self.layout.namespaces))
        print(f"all Ready {figures.ready_seconds:.1f} s after the apply began", flush=True)
        # The version tags follow the rollouts (they never hold one up): when MLflow holds them all.
        recorded = self.all_model_deployments("Recorded")
        figures.recorded_seconds = max(since for _, since in recorded) - began

    def all_model_deployments(self, condition: str) -> list[tuple[float, float]]:
        """Waits until every ModelDeployment has the condition True; (created, became True) of each."""
        return wait_all(
            self.api,
            "/apis/aliasroll.io/v1alpha1/modeldeployments",
            set(self.layout.namespaces),
            count=len(self.layout.resources),
            type_=condition,
            timeout=self.timeout,
        )

    def registry_calls(self, figures: Figures, intervals: int = 3) -> None:
        """Registry calls over a quiet stretch of whole poll intervals."""
        assert self.operator is not None
        time.sleep(self.poll)
        pid = self.operator.process.pid
        assert pid is not None
        samples_before, cpu_before = self.operator.metrics(), tree_cpu_seconds(pid)
        time.sleep(intervals * self.poll)
        samples_after, cpu_after = self.operator.metrics(), tree_cpu_seconds(pid)
        before, after = registry_calls(samples_before), registry_calls(samples_after)
        passes = total(samples_after, "aliasroll_passes_total") - total(
            samples_before, "aliasroll_passes_total"
        )
        figures.per_poll = {call: (after[call] - before.get(call, 0.0)) / intervals for call in after}
        figures.rest_cpu = (cpu_after - cpu_before) / (intervals * self.poll)
        figures.rest_passes = passes / (intervals * self.poll)

    def moves(self, figures: Figures, count: int) -> None:
        """@production of a model moved at a random point of the poll cycle, until all its
        resources' pod templates are pinned to the new version; each move of another model."""
        assert self.operator is not None
        for model in random.sample(self.layout.models, min(count, len(self.layout.models))):
            targets = self.layout.of_model(model)
            time.sleep(random.uniform(0.0, self.poll))
            moved = time.monotonic()
            self.client.set_registered_model_alias(model, "production", "2")
            self.moved.append(model)
            while not all(version == "2" for version in pinned_versions(self.api, targets)):
                if time.monotonic() > moved + 10 * self.poll:
                    raise SystemExit(f"the move of {model} did not reach its {len(targets)} resources")
                time.sleep(0.1)
            figures.moves.append(time.monotonic() - moved)
            while not all(serving == "2" for serving in ready_versions(self.api, targets)):
                if time.monotonic() > moved + 10 * self.poll + self.timeout:
                    raise SystemExit(f"the resources of {model} did not become Ready at its new version")
                time.sleep(0.2)
            figures.moves_ready.append(time.monotonic() - moved)
            print(
                f"  {model} moved: its {len(targets)} resources pinned after {figures.moves[-1]:.2f} s, "
                f"Ready at the new version after {figures.moves_ready[-1]:.2f} s",
                flush=True,
            )
        figures.rss_mb = self.operator.peak_rss_mb()

    def restart(self, figures: Figures) -> None:
        """A new operator process reads everything and must find nothing to write."""
        assert self.operator is not None
        self.settled()
        statuses = self.statuses()
        self.operator.stop()
        time.sleep(2.0)
        before = apiserver_requests(self.api)
        restarted = time.monotonic()
        self.operator = Operator(self.kubeconfig, self.work)
        self.operator.start()
        count = len(self.layout.resources)
        while True:
            metrics = self.operator.metrics()
            passes = total(metrics, "aliasroll_passes_total")
            if passes >= count and total(metrics, "aliasroll_queue_depth") == 0:
                break
            if time.monotonic() > restarted + self.timeout:
                raise SystemExit(f"the restarted operator did not converge: {passes:.0f} passes of {count}")
            time.sleep(0.2)
        figures.converged = time.monotonic() - restarted
        time.sleep(5.0)  # anything a pass wrote has reached the API server's counters by now
        after = apiserver_requests(self.api)
        figures.restart_writes = {
            key: after[key] - before.get(key, 0.0) for key in after if after[key] > before.get(key, 0.0)
        }
        figures.restart_rss_mb = self.operator.peak_rss_mb()
        calls = registry_calls(self.operator.metrics())  # the new process counts from zero
        figures.restart_registry_writes = sum(n for call, n in calls.items() if call in REGISTRY_WRITES)
        now = self.statuses()
        changed = {key: (old, now.get(key)) for key, old in statuses.items()}
        figures.restart_changed = [
            f"{ns}/{name}: {json.dumps(old, sort_keys=True)} -> {json.dumps(new, sort_keys=True)}"
            for (ns, name), (old, new) in changed.items()
            if old != new
        ]

    def settled(self) -> None:
        """Until every resource is Ready at the version its alias names (what the moves started has
        finished: a restart before that would find the old process's work still to do)."""
        moved = set(self.moved)
        expected = ["2" if model in moved else "1" for _, _, model in self.layout.resources]
        targets = [(ns, name) for ns, name, _ in self.layout.resources]
        deadline = time.monotonic() + self.timeout
        while ready_versions(self.api, targets) != expected:
            if time.monotonic() > deadline:
                raise SystemExit("the resources did not all become Ready at their aliases' versions")
            time.sleep(1.0)
        time.sleep(2.0)

    def statuses(self) -> dict[tuple[str, str], Any]:
        namespaces = set(self.layout.namespaces)
        return {
            (item["metadata"]["namespace"], item["metadata"]["name"]): item.get("status")
            for item in listed(self.api, "/apis/aliasroll.io/v1alpha1/modeldeployments", namespaces)
        }


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {part: after[part] - before.get(part, 0.0) for part in after}


def cpu_line(label: str, parts: dict[str, float], seconds: float) -> str:
    busy = sum(parts.values())
    each = ", ".join(
        f"{part} {n:.1f}" for part, n in sorted(parts.items(), key=lambda item: -item[1]) if n >= 0.1
    )
    return f"{label}: {busy:.0f} CPU s in {seconds:.0f} s ({busy / seconds:.2f} cores): {each}"


def row(label: str, values: list[float], digits: int = 1) -> str:
    cells = (percentile(values, 0.5), percentile(values, 0.95), max(values))
    return f"{label:<50}" + "".join(f"{cell:9.{digits}f}" for cell in cells)


def report(f: Figures) -> None:
    ratio = f.ready_seconds / f.floor_seconds
    calls = sum(f.per_poll.values())
    by_call = ", ".join(f"{call} {n:.1f}" for call, n in sorted(f.per_poll.items()) if n)
    writes = ", ".join(f"{verb} {what} {n:.0f}" for (verb, what), n in sorted(f.restart_writes.items()))
    print()
    print(f"{f.count} ModelDeployments, {f.models} models, {f.namespaces} namespaces, poll {f.poll:g}s")
    print(f"{'':<50}{'seconds':>9}")
    print(f"{'floor: apply of the Deployments and Services':<50}{f.floor_apply:9.1f}")
    print(f"{'floor: apply began -> all Deployments available':<50}{f.floor_seconds:9.1f}")
    print(f"{'apply of the ModelDeployments':<50}{f.applied:9.1f}")
    print(f"{'apply began -> all ModelDeployments Ready':<50}{f.ready_seconds:9.1f}   {ratio:.2f}x the floor")
    recorded = "apply began -> all their records in MLflow"
    print(f"{recorded:<50}{f.recorded_seconds:9.1f}   (written after the rollouts)")
    print(f"{'':<50}{'p50':>9}{'p95':>9}{'max':>9}")
    print(row("floor: each Deployment created -> available", f.floor_each))
    print(row("each ModelDeployment created -> Ready", f.each))
    print(row("alias move -> all its resources pinned", f.moves, 2) + f"   ({len(f.moves)} moves)")
    print(row("alias move -> all its resources Ready at it", f.moves_ready, 2))
    print(f"registry calls per poll: {calls:.1f} for {f.models} models, {f.count} resources ({by_call})")
    made = ", ".join(f"{verb} {what} {n:.0f}" for (verb, what), n in sorted(f.ready_writes.items()))
    print(cpu_line("floor: apply -> all available", f.floor_cpu, f.floor_seconds))
    print(cpu_line("apply -> all Ready", f.ready_cpu, f.ready_seconds))
    print(f"  the operator ran {f.ready_passes:.0f} passes")
    print(f"  writes to the API server meanwhile (every client): {made}")
    read = ", ".join(f"{verb} {what} {n:.0f}" for (verb, what), n in sorted(f.ready_reads.items()))
    print(f"  reads of those kinds meanwhile (every client): {read}")
    called = ", ".join(f"{call} {n:.0f}" for call, n in sorted(f.ready_registry.items()) if n)
    print(f"  the operator's registry calls meanwhile: {called}")
    events = ", ".join(f"{reason} {n}" for reason, n in sorted(f.ready_events.items()))
    print(f"  the ModelDeployments' events meanwhile, by reason: {events}")
    print(f"at rest: {f.rest_passes:.1f} passes a second, {f.rest_cpu * 100:.1f} % of a core")
    print(f"operator peak RSS: {f.rss_mb:.0f} MB (the restarted one: {f.restart_rss_mb:.0f} MB)")
    print(
        f"restart: every resource passed and the queue empty after {f.converged:.1f} s; writes: "
        f"{sum(f.restart_writes.values()):.0f}"
        + (f" ({writes})" if writes else "")
        + f"; registry writes: {f.restart_registry_writes:.0f}"
    )
    for change in f.restart_changed[:3]:
        print(f"  status changed by the restart: {change}")
    print()
    goals = [
        (f"all Ready within {READY_FACTOR_GOAL:g}x the floor", ratio <= READY_FACTOR_GOAL, f"{ratio:.2f}x"),
        (
            f"each Ready within {READY_SECONDS_GOAL:g} s of its creation",
            max(f.each) <= READY_SECONDS_GOAL,
            f"max {max(f.each):.1f} s",
        ),
        (f"RSS < {RSS_GOAL_MB:g} MB", max(f.rss_mb, f.restart_rss_mb) < RSS_GOAL_MB, f"{f.rss_mb:.0f} MB"),
        ("registry calls per poll <= models", calls <= f.models, f"{calls:.1f}"),
        (
            "a move reaches all its resources within one poll",
            max(f.moves) <= f.poll,
            f"max {max(f.moves):.2f} s",
        ),
        (
            "a restart converges with no writes",
            not f.restart_writes and not f.restart_registry_writes,
            f"{sum(f.restart_writes.values()):.0f} to the API server, "
            f"{f.restart_registry_writes:.0f} to MLflow",
        ),
    ]
    for goal, ok, figure in goals:
        print(f"goal: {goal}: {'met' if ok else 'NOT met'} ({figure})")
    print("note: API server timestamps have whole seconds; the timer lists every 2 s.")


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--per-model", type=int, default=20, help="ModelDeployments per model")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--poll", type=float, default=10.0, help="the resources' pollInterval, seconds")
    parser.add_argument("--moves", type=int, default=5, help="alias moves, each of another model")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each phase")
    args = parser.parse_args()

    layout = Layout(models=args.models, per_model=args.per_model, namespaces=args.namespaces)
    figures = Figures(
        count=len(layout.resources),
        models=args.models,
        namespaces=args.namespaces,
        per_model=args.per_model,
        poll=args.poll,
    )
    # A stopped run (kill, timeout) still stops what it started.
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-scale-"))
    run = Run(layout=layout, poll=args.poll, timeout=args.timeout, work=work)
    print(f"{figures.count} ModelDeployments over {args.models} models in {args.namespaces} namespaces")
    succeeded = False
    try:
        run.start()
        run.floor(figures)
        run.ready(figures)
        run.registry_calls(figures)
        run.moves(figures, args.moves)
        run.restart(figures)
        report(figures)
        succeeded = True
    finally:
        run.stop()
    if succeeded:  # on failure the operator's log stays for a look
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"the operator's log: {work / 'operator.log'}")


if __name__ == "__main__":
    main()
