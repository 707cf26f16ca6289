"""Two tenants on one operator: A is hostile, B is ordinary. The parts of the hostile-tenant tier
(tests/e2e/test_hostile_tenants.py), kept apart from it so the benchmark (bench/hostile_tenants.py)
runs the same scenario.

Tenant A, in a namespace of its own, gives the operator everything a namespace user may give it:

- registries (`spec.registry.trackingUri`) and Prometheus servers (`analysis.prometheus.address`) on
  servers of A's (tests/unit/hostile.py, on 127.0.0.1) that drip one byte a second, stream without
  end, answer 30 MB, or accept and never answer; each resource names an endpoint of its own (a path
  of its own), so none share a poll loop, a thread or a client;
- ModelDeployments naming Secrets that do not exist, each another one (a watch each, at most);
- Deployments carrying the operator's managed-by label and a large annotation, not controlled by any
  ModelDeployment (anyone who may create a Deployment may make them);
- webhook deliveries to the operator's receiver: forged signatures, ids of 8,000 characters, bodies
  over the limit (announced, and chunked without a length), a body sent slowly, unknown registry
  paths, headers over the parser's limit, and deliveries signed with A's own registry's secret that
  name B's model. From source addresses of their own (127.0.0.2 and up), as attackers' would be.

Tenant B moves @production of a model (polled every second, as users set it) and runs a watched
canary (steps, automatic promotion, an analysis on a well-behaved Prometheus: ScriptedPrometheus).

The scenario (`run`), on an operator of its own watching A's and B's namespaces: B alone (timed
moves, then the canary); A's foreign Deployments; A's ModelDeployments, with one move of B timed
while they arrive, until every one has met its endpoint; B beside A (the same moves and canary)
while A's deliveries keep coming. The operator's RSS is sampled all along and its CPU seconds and
the machine's load are taken per phase; B's moves are timed to the pod template pinned, the
Deployment rolled out and the status Ready, so a slower Ready can be told apart as the operator's
or the control plane's.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import random
import select
import ssl
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from harness import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    REPO,
    Kube,
    available_at,
    deployment_version,
    model_deployment,
    ready_at,
    wait_for,
)
from hostile import Behaviour, Hostile
from mlflow import MlflowClient

from aliasroll.labels import LABEL_MANAGED_BY
from aliasroll.webhooks import DELIVERY_ID_HEADER, PATH, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from localcluster import LocalCluster
from mlflowserver import free_port
from operatorprocess import OperatorProcess, image_python
from support.prometheus_script import ScriptedPrometheus
from support.registry import quick_versions

T = TypeVar("T")

#: What each hostile server does with every request (tests/unit/hostile.py).
BEHAVIOURS: dict[str, Behaviour] = {
    "drip": Behaviour("drip", every=1.0),  # one byte a second, for ever
    "endless": Behaviour("endless"),  # a chunked body without end, as fast as it is read
    "huge": Behaviour("huge"),  # a 30 MB body (Content-Length)
    "silent": Behaviour("silent"),  # accepts, reads the request, never answers
}
#: Resources of A per behaviour, for the registry and for Prometheus each: together more than the
#: operator's 16 pass slots for each kind (the review: 16 dripping endpoints stopped every pass).
PER_BEHAVIOUR = 5
MISSING_SECRETS = 100
FOREIGN_DEPLOYMENTS = 1_000
#: Each foreign Deployment carries an annotation this large (16 MB in all): a cache that kept them
#: whole would show it in the operator's memory.
FOREIGN_PADDING = 16 * 1024
#: Webhook registries of the tier's operator: B's (the real MLflow server) and A's own, whose secret
#: A holds (so A can sign deliveries); its tracking URI is one of A's silent registries.
B_REGISTRY = "tenant-b"
B_SECRET = "qH7vN2xK9mR4tW8zL1cB6pF3jD0sY5gA"
A_REGISTRY = "tenant-a"
A_SECRET = "Zr3Kc8Wn1Qx6Lp9Tv2Hm7Bj4Fs0Gd5Ye"
#: B's ordinary alias move: how many replicas roll.
B_REPLICAS = 2
CANARY_STEPS = [{"weight": 50, "duration": "2s"}]
MiB = 1 << 20


def memory_limit_bytes() -> int:
    """The operator container's memory limit in manifests/operator.yaml."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for document in yaml.safe_load_all((REPO / "manifests" / "operator.yaml").read_text()):
        if (document or {}).get("kind") != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            if container["name"] == "operator":
                raw = str(container["resources"]["limits"]["memory"])
                for suffix, scale in units.items():
                    if raw.endswith(suffix):
                        return int(raw.removesuffix(suffix)) * scale
                return int(raw)
    raise AssertionError("no operator container with a memory limit in manifests/operator.yaml")


# ------------------------------------------------------------------------------------ A's servers


class LoopThread:
    """An asyncio loop in a daemon thread, for the hostile servers (which are asyncio servers)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-servers", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class HostileServers:
    """One server per behaviour on 127.0.0.1, all on one loop of their own; stopped by `close`."""

    def __init__(self) -> None:
        self._loop = LoopThread()
        self.servers: dict[str, Hostile] = {}

    def start(self) -> HostileServers:
        for name, behaviour in BEHAVIOURS.items():
            self.servers[name] = self._loop.run(Hostile(behaviour).start())
        return self

    def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                self._loop.run(server.stop())
        self._loop.close()

    def __enter__(self) -> HostileServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per behaviour: connections accepted, body bytes written."""
        return {
            name: {"connections": server.connections, "sent": server.sent}
            for name, server in self.servers.items()
        }


# ------------------------------------------------------------------------------------ A's objects


def hostile_registry_resources(servers: HostileServers) -> list[dict[str, Any]]:
    """ModelDeployments whose registry is one of A's servers, each at a path (an endpoint) of its own."""
    return [
        model_deployment(
            f"registry-{name}-{index}", "a-hostile", f"{server.url}/registry-{index}", replicas=1
        )
        for name, server in servers.servers.items()
        for index in range(PER_BEHAVIOUR)
    ]


def hostile_prometheus_resources(
    servers: HostileServers, *, tracking_uri: str, model: str
) -> list[dict[str, Any]]:
    """Canaries measured on one of A's servers as their Prometheus, each at an address of its own;
    their registry is the real one, so they reach the measuring step."""
    return [
        model_deployment(
            f"prometheus-{name}-{index}",
            model,
            tracking_uri,
            replicas=1,
            canary={
                "alias": "canary",
                "steps": [{"weight": 50, "duration": "1h"}],
                "analysis": {
                    "interval": "1s",
                    "errorRate": {"maxPercent": 1},
                    "prometheus": {"address": f"{server.url}/prometheus-{index}"},
                },
                "promotion": "auto",
            },
        )
        for name, server in servers.servers.items()
        for index in range(PER_BEHAVIOUR)
    ]


def missing_secret_resources(*, tracking_uri: str, model: str) -> list[dict[str, Any]]:
    resources = []
    for index in range(MISSING_SECRETS):
        body = model_deployment(f"secret-{index}", model, tracking_uri, replicas=1)
        body["spec"]["registry"]["credentialsSecretRef"] = {"name": f"missing-{index}"}
        resources.append(body)
    return resources


def foreign_deployments() -> list[dict[str, Any]]:
    """Deployments with the operator's label, no owner, paused at 0 replicas (no ReplicaSet, no pod):
    only the operator's watch of Deployments ever sees them."""
    padding = "x" * FOREIGN_PADDING
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": f"foreign-{index}",
                "labels": {LABEL_MANAGED_BY: "aliasroll", "aliasroll.io/model-deployment": f"secret-{index}"},
                "annotations": {"hostile.example/padding": padding},
            },
            "spec": {
                "replicas": 0,
                "paused": True,
                "selector": {"matchLabels": {"app": f"foreign-{index}"}},
                "template": {
                    "metadata": {"labels": {"app": f"foreign-{index}", LABEL_MANAGED_BY: "aliasroll"}},
                    "spec": {"containers": [{"name": "c", "image": "foreign:1"}]},
                },
            },
        }
        for index in range(FOREIGN_DEPLOYMENTS)
    ]


def create_all(cluster: LocalCluster, objects: list[dict[str, Any]], namespace: str, path: Path) -> float:
    """One `kubectl create` of a List of objects; its seconds."""
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    started = time.monotonic()
    cluster.kubectl("create", "-n", namespace, "-f", str(path), "-o", "name", timeout=600)
    return time.monotonic() - started


def post_all(
    cluster: LocalCluster, collection: str, objects: list[dict[str, Any]], *, threads: int = 4
) -> float:
    """POSTs each object to `collection` (an API path), a few at a time, as the admin; its seconds."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    context.load_cert_chain(str(cluster.pki_dir / "admin.crt"), str(cluster.pki_dir / "admin.key"))
    netloc = urlsplit(cluster.server).netloc
    local = threading.local()
    opened: list[http.client.HTTPSConnection] = []

    def post(obj: dict[str, Any]) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPSConnection(netloc, context=context, timeout=60)
            opened.append(connection)
        connection.request(
            "POST", collection, body=json.dumps(obj), headers={"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        raw = answer.read()
        if answer.status != 201:
            raise AssertionError(f"POST {collection}: {answer.status} {raw[:300]!r}")

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, objects))
    finally:
        for connection in opened:
            connection.close()
    return time.monotonic() - started


def settled_a(kube: Kube, namespace: str, expected: int) -> list[dict[str, Any]] | None:
    """A's resources once every one has had a pass and each shows what its endpoint did to it: the
    registry ones unreachable, the Secret ones without credentials, the canaries unable to read
    their metrics."""
    resources = kube.list("mdep", namespace)
    if len(resources) < expected:
        return None
    for resource in resources:
        status = resource.get("status") or {}
        if status.get("observedGeneration") != resource["metadata"]["generation"]:
            return None
        name = resource["metadata"]["name"]
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}
        if name.startswith(("registry-", "secret-")):
            if conditions.get("RegistryReachable", ("True", ""))[0] != "False":
                return None
        elif name.startswith("prometheus-"):
            canary = status.get("canary") or {}
            if "could not read metrics" not in canary.get("message", ""):
                return None
    return resources


# ------------------------------------------------------------------------------------ A's webhooks


def signed_headers(secret: str, body: bytes, delivery_id: str | None = None) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()))
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


def alias_event(model: str, version: str) -> bytes:
    return json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": model, "alias": "production", "version": version},
        }
    ).encode()


@dataclass
class WebhookFlood:
    """Threads sending A's deliveries to the receiver until stopped; each outcome counted by case.

    Sources are 127.0.0.2 and up (A's machines); the receiver sees each as an address of its own."""

    listen: str  # host:port of the receiver
    b_model: str
    a_model: str
    sources: int = 8
    pause: float = 0.05  # between rounds of every case, per thread
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> WebhookFlood:
        self._threads = [
            threading.Thread(target=self._run, args=(self._quick_cases,), name="flood", daemon=True),
            threading.Thread(target=self._run, args=(self._slow_cases,), name="slowloris", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def __enter__(self) -> WebhookFlood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, case: str, outcome: str) -> None:
        with self._lock:
            self.outcomes.setdefault(case, Counter())[outcome] += 1

    def totals(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {case: dict(counts) for case, counts in self.outcomes.items()}

    def _run(self, cases: Callable[[], Iterator[tuple[str, Callable[[str], str]]]]) -> None:
        addresses = itertools.cycle(f"127.0.0.{2 + n}" for n in range(self.sources))
        while not self._stop.is_set():
            for case, send in cases():
                if self._stop.is_set():
                    return
                try:
                    outcome = send(next(addresses))
                except (OSError, http.client.HTTPException) as error:
                    outcome = f"closed ({type(error).__name__})"
                self.count(case, outcome)
            self._stop.wait(self.pause)

    def _connection(self, source: str, timeout: float = 10) -> http.client.HTTPConnection:
        host, port = self.listen.rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=timeout, source_address=(source, 0))

    def _post(self, source: str, path: str, body: bytes, headers: dict[str, str]) -> str:
        connection = self._connection(source)
        try:
            connection.request(
                "POST", path, body=body, headers={**headers, "Content-Type": "application/json"}
            )
            answer = connection.getresponse()
            raw = answer.read()
            try:
                said = json.loads(raw).get("outcome", "?")
            except ValueError:
                said = "?"
            return f"{answer.status} {said}"
        finally:
            connection.close()

    def _quick_cases(self) -> Iterator[tuple[str, Callable[[str], str]]]:
        b_path = f"{PATH}/{B_REGISTRY}"
        a_path = f"{PATH}/{A_REGISTRY}"
        event = alias_event(self.b_model, "1")
        forged = signed_headers("not-the-secret-of-registry-b-at-all", event)
        yield "forged signature", lambda source: self._post(source, b_path, event, forged)
        long_id = signed_headers(B_SECRET, event, delivery_id="f" * 8000)
        yield "8,000-character id", lambda source: self._post(source, b_path, event, long_id)
        yield (
            "header over the parser's limit",
            lambda source: self._post(source, b_path, event, {**forged, "X-Padding": "p" * 65536}),
        )
        big = b"{" + b" " * (1 << 20) + b"}"
        yield "1 MiB body", lambda source: self._post(source, b_path, big, signed_headers(B_SECRET, big))
        yield "2 MiB chunked body", lambda source: self._chunked(source, b_path, 2 << 20)
        yield "unknown registry", lambda source: self._post(source, f"{PATH}/nobody", event, forged)
        # A holds its own registry's secret: signed rightly, naming B's model (nobody follows it on
        # A's registry) and A's (which wakes A's silent registry, nothing of B's).
        yield (
            "signed by A, B's model",
            lambda source: self._post(source, a_path, event, signed_headers(A_SECRET, event)),
        )
        a_event = alias_event(self.a_model, "1")
        yield (
            "signed by A, A's model",
            lambda source: self._post(source, a_path, a_event, signed_headers(A_SECRET, a_event)),
        )

    def _chunked(self, source: str, path: str, size: int) -> str:
        connection = self._connection(source)
        try:
            connection.putrequest("POST", path)
            connection.putheader("Transfer-Encoding", "chunked")
            connection.putheader("Content-Type", "application/json")
            connection.endheaders()
            piece = b"x" * 65536
            for _ in range(size // len(piece)):
                connection.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            connection.send(b"0\r\n\r\n")
            answer = connection.getresponse()
            answer.read()
            return f"{answer.status}"
        finally:
            connection.close()

    def _slow_cases(self) -> Iterator[tuple[str, Callable[[str], str]]]:
        yield "body a byte at a time", self._slow_body

    def _slow_body(self, source: str) -> str:
        """A body announced as 200 bytes, sent a byte each 0.5 s (a request held in flight) until the
        receiver answers."""
        connection = self._connection(source, timeout=30)
        try:
            connection.putrequest("POST", f"{PATH}/{B_REGISTRY}")
            connection.putheader("Content-Length", "200")
            connection.putheader("Content-Type", "application/json")
            connection.endheaders()
            assert connection.sock is not None
            for _ in range(200):
                if self._stop.wait(0.5):
                    return "stopped"
                if select.select([connection.sock], [], [], 0)[0]:
                    break  # answered (or closed) before the body was whole
                connection.send(b" ")
            answer = connection.getresponse()
            answer.read()
            return f"{answer.status}"
        finally:
            connection.close()


# ------------------------------------------------------------------------------------ the operator


def process_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """The operator's VmRSS every `every` seconds in a thread, until stopped: the largest seen, and
    the largest since each `mark` (a phase of the scenario)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid = pid
        self.every = every
        self.largest = 0
        self.phases: dict[str, float] = {}  # phase -> largest VmRSS in it, MiB
        self._phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    @property
    def phase(self) -> str:
        return self._phase

    def mark(self, phase: str) -> None:
        self._phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                rss = process_status(self.pid)["VmRSS"]
                self.largest = max(self.largest, rss)
                self.phases[self._phase] = max(self.phases.get(self._phase, 0.0), round(rss / MiB, 1))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def webhook_registries(path: Path, *, b_tracking_uri: str, a_tracking_uri: str) -> Path:
    path.write_text(
        json.dumps(
            {
                B_REGISTRY: {"trackingUri": b_tracking_uri, "secret": B_SECRET},
                A_REGISTRY: {"trackingUri": a_tracking_uri, "secret": A_SECRET},
            }
        )
    )
    return path


#: aiohttp's own line before the traceback of a request it could not parse (a header over its limit):
#: handled (answered 400), not a crash of the operator's.
PARSE_ERROR = "Error handling request"


def crashes_in(log: str) -> list[str]:
    """Lines of the operator's log that say something crashed or ran out of memory: its own crash
    lines, and any traceback but those of requests aiohttp could not parse."""
    marks = ("reconcile pass failed", "crashed", "MemoryError", "canary analysis failed", "Killed")
    lines = log.splitlines()
    return [
        line
        for index, line in enumerate(lines)
        if any(mark in line for mark in marks)
        or (line.startswith("Traceback") and not (index and PARSE_ERROR in lines[index - 1]))
    ]


# ------------------------------------------------------------------------------------ B's timings


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Move:
    pinned: float  # seconds to the production Deployment's pod template naming the new version
    available: float  # ... to that Deployment having rolled out (every replica available at it)
    ready: float  # ... to the resource's status Ready at the new version (the operator saw it)


def time_moves(
    kube: Kube,
    registry: MlflowClient,
    namespace: str,
    name: str,
    model: str,
    versions: Iterator[str],
    count: int,
) -> list[Move]:
    """`count` moves of @production in MLflow, each timed to the pod template pinned (the operator
    noticed the move and applied it) and to the resource's status Ready at the new version."""
    moves = []
    for _ in range(count):
        # A moment at random within the poll interval, so the moves do not all fall at one point of
        # the poll's grid (before and after alike).
        time.sleep(0.5 + random.random())
        version = next(versions)
        seen: dict[str, float] = {}
        started = time.monotonic()
        registry.set_registered_model_alias(model, "production", version)

        def ready(
            version: str = version, seen: dict[str, float] = seen, started: float = started
        ) -> dict[str, Any] | None:
            production = f"{name}-production"
            if "pinned" not in seen and deployment_version(kube, namespace, production) == version:
                seen["pinned"] = time.monotonic() - started
            if "available" not in seen and available_at(kube, namespace, production, version):
                seen["available"] = time.monotonic() - started
            return ready_at(kube, namespace, name, version)

        wait_for(ready, timeout=90, what=f"{namespace}/{name} Ready at {version}", interval=0.05)
        done = time.monotonic() - started
        moves.append(Move(pinned=seen.get("pinned", done), available=seen.get("available", done), ready=done))
    return moves


def time_canary(
    kube: Kube,
    registry: MlflowClient,
    prometheus: ScriptedPrometheus,
    namespace: str,
    name: str,
    model: str,
    version: str,
) -> dict[str, Any]:
    """Seconds from @canary set to the canary promoted (@production moved by the operator and the
    resource Ready at that version with the run Succeeded), when the run first showed each phase,
    and when each of its analysis readings reached the Prometheus, all from the alias move."""
    started = time.monotonic()
    asked_before = len(prometheus.asked(model))
    registry.set_registered_model_alias(model, "canary", version)
    phases: dict[str, float] = {}

    def promoted() -> bool:
        resource = kube.get("mdep", name, namespace) or {}
        canary = (resource.get("status") or {}).get("canary") or {}
        if canary.get("version") == version and canary.get("phase"):
            phases.setdefault(canary["phase"], round(time.monotonic() - started, 2))
        last = ready_at(kube, namespace, name, version) or {}
        ended = (last.get("status") or {}).get("lastCanary") or {}
        return ended.get("phase") == "Succeeded" and ended.get("version") == version

    wait_for(promoted, timeout=120, what=f"{namespace}/{name}: canary {version} promoted", interval=0.1)
    assert registry.get_registered_model(model).aliases.get("production") == version
    seconds = time.monotonic() - started
    readings = [round(at - started, 2) for at in prometheus.asked(model)[asked_before:]]
    return {"seconds": seconds, "phases": phases, "readings": readings}


def timings(moves: list[Move], canary: dict[str, Any]) -> dict[str, Any]:
    ready = [move.ready for move in moves]
    pinned = [move.pinned for move in moves]
    return {
        "moves": [round(seconds, 3) for seconds in ready],
        "median": median(ready),
        "pinned": [round(seconds, 3) for seconds in pinned],
        "pinned_median": median(pinned),
        "available_median": median([move.available for move in moves]),
        "canary": canary["seconds"],
        "canary_timeline": {"phases": canary["phases"], "readings": canary["readings"]},
    }


def b_objects(*, tracking_uri: str, mover_model: str, canary_model: str, prometheus: str) -> list[Any]:
    mover = model_deployment("mover", mover_model, tracking_uri, replicas=B_REPLICAS)
    watched = model_deployment(
        "watched",
        canary_model,
        tracking_uri,
        replicas=B_REPLICAS,
        canary={
            "alias": "canary",
            "steps": CANARY_STEPS,
            "analysis": {
                "interval": "1s",
                "errorRate": {"maxPercent": 1},
                "prometheus": {"address": prometheus},
            },
            "promotion": "auto",
        },
    )
    return [mover, watched]


# ------------------------------------------------------------------------------------ the scenario

MOVES = 7  # timed alias moves of B before A, and as many after


@contextlib.contextmanager
def own_operator(
    cluster: LocalCluster,
    folder: Path,
    *,
    log_path: Path,
    namespaces: tuple[str, ...],
    b_tracking_uri: str,
    a_tracking_uri: str,
) -> Iterator[OperatorProcess]:
    """The operator as the Deployment in manifests/ configures it (its registry timeout, webhook
    registries with a secret each), watching only `namespaces`, with a token of its own."""
    token = cluster.mint_token(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, expiration_seconds=3600)
    process = OperatorProcess(
        kubeconfig=cluster.write_kubeconfig_for_token(folder / "kubeconfig", token),
        log_path=log_path,
        verbose=True,
        # The image's dependencies, not the test environment's: its memory is what is measured.
        python=image_python(),
        args=[arg for namespace in namespaces for arg in ("--namespace", namespace)],
        env={
            "ALIASROLL_SERVING_IMAGE": "aliasroll/serving:e2e",
            "ALIASROLL_REGISTRY_TIMEOUT": "5",
            "ALIASROLL_WEBHOOK_REGISTRIES": str(
                webhook_registries(
                    folder / "registries.yaml", b_tracking_uri=b_tracking_uri, a_tracking_uri=a_tracking_uri
                )
            ),
            "ALIASROLL_WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}",
            "ALIASROLL_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        },
    )
    process.log_path.unlink(missing_ok=True)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def run(
    cluster: LocalCluster,
    kube: Kube,
    registry: MlflowClient,
    *,
    tracking_uri: str,
    folder: Path,
    log_path: Path,
    moves: int = MOVES,
) -> dict[str, Any]:
    """The whole scenario on an operator of its own: B alone, then A, then B beside A. Returns the
    figures, including what the operator's process and log said before it was stopped. Everything
    it started (servers, operator, namespaces) is stopped or deleted when it returns or raises."""
    suffix = uuid.uuid4().hex[:6]
    tenant_a, tenant_b = f"hostile-a-{suffix}", f"hostile-b-{suffix}"
    models = {name: f"hostile-{name}-{suffix}" for name in ("mover", "canary", "a")}
    figures: dict[str, Any] = {"namespaces": [tenant_a, tenant_b], "moves": moves}
    versions = quick_versions(registry, models["mover"], 2 * moves + 3)
    registry.set_registered_model_alias(models["mover"], "production", versions[0])
    quick_versions(registry, models["canary"], 3)
    registry.set_registered_model_alias(models["canary"], "production", "1")
    quick_versions(registry, models["a"], 2)
    registry.set_registered_model_alias(models["a"], "production", "1")
    registry.set_registered_model_alias(models["a"], "canary", "2")

    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(HostileServers())
        prometheus = stack.enter_context(ScriptedPrometheus())
        for namespace in (tenant_a, tenant_b):
            cluster.kubectl("create", "namespace", namespace)
            stack.callback(cluster.kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
        own = stack.enter_context(
            own_operator(
                cluster,
                folder,
                log_path=log_path,
                namespaces=(tenant_a, tenant_b),
                b_tracking_uri=tracking_uri,
                a_tracking_uri=f"{servers.servers['silent'].url}/registry-0",
            )
        )
        pid = own.pid
        assert pid is not None
        # The resources go while the operator still runs (it stops their workers), before the namespaces.
        for namespace in (tenant_a, tenant_b):
            stack.callback(
                cluster.kubectl,
                "delete",
                "modeldeployments",
                "--all",
                "-n",
                namespace,
                "--timeout=60s",
                check=False,
            )
        rss = stack.enter_context(RssSampler(pid))
        cpu: dict[str, float] = {}
        load: dict[str, float] = {}
        phase_started = {"at": cpu_seconds(pid)}

        def phase(name: str) -> None:
            """Ends the phase under way (its operator CPU seconds, the machine's load) and begins `name`."""
            now = cpu_seconds(pid)
            cpu[rss.phase] = round(now - phase_started["at"], 2)
            load[rss.phase] = round(os.getloadavg()[0], 2)
            phase_started["at"] = now
            rss.mark(name)

        # ---- B alone.
        phase("B alone")
        for body in b_objects(
            tracking_uri=tracking_uri,
            mover_model=models["mover"],
            canary_model=models["canary"],
            prometheus=prometheus.url,
        ):
            kube.apply(body, namespace=tenant_b)
        for name in ("mover", "watched"):
            wait_for(
                lambda name=name: ready_at(kube, tenant_b, name, "1"), timeout=60, what=f"{name} Ready at 1"
            )
        upcoming = iter(versions[1:])
        time_moves(kube, registry, tenant_b, "mover", models["mover"], upcoming, 1)  # warm-up, not counted
        before = time_moves(kube, registry, tenant_b, "mover", models["mover"], upcoming, moves)
        canary_before = time_canary(kube, registry, prometheus, tenant_b, "watched", models["canary"], "2")
        figures["before"] = timings(before, canary_before)
        figures["rss_before_a_mib"] = process_status(pid)["VmRSS"] / MiB

        # ---- A arrives: the foreign Deployments, then its ModelDeployments.
        phase("A's foreign Deployments")
        started = time.monotonic()
        figures["foreign_created_seconds"] = post_all(
            cluster, f"/apis/apps/v1/namespaces/{tenant_a}/deployments", foreign_deployments()
        )
        phase("A's ModelDeployments")
        a_resources = [
            *hostile_registry_resources(servers),
            *hostile_prometheus_resources(servers, tracking_uri=tracking_uri, model=models["a"]),
            *missing_secret_resources(tracking_uri=tracking_uri, model=models["a"]),
        ]
        figures["a_resources"] = len(a_resources)
        # One move of B while A's resources arrive (their first passes meet A's endpoints): reported.
        with ThreadPoolExecutor(1) as creating:
            created = creating.submit(create_all, cluster, a_resources, tenant_a, folder / "a.json")
            [arriving] = time_moves(kube, registry, tenant_b, "mover", models["mover"], upcoming, 1)
            figures["a_created_seconds"] = created.result()
        figures["while_a_arrives"] = {
            "pinned": arriving.pinned,
            "available": arriving.available,
            "ready": arriving.ready,
        }
        wait_for(
            lambda: settled_a(kube, tenant_a, len(a_resources)),
            timeout=150,
            what="every resource of A having had a pass and met its endpoint",
            interval=1.0,
        )
        figures["a_settled_seconds"] = time.monotonic() - started
        figures["foreign_deployments"] = sum(
            1
            for deployment in kube.list("deployments", tenant_a, f"{LABEL_MANAGED_BY}=aliasroll")
            if deployment["metadata"]["name"].startswith("foreign-")
        )

        # ---- B beside A, while A's deliveries keep coming.
        phase("B beside A")
        flood = stack.enter_context(
            WebhookFlood(
                listen=own.extra_env["ALIASROLL_WEBHOOK_LISTEN"], b_model=models["mover"], a_model="a-hostile"
            )
        )
        after = time_moves(kube, registry, tenant_b, "mover", models["mover"], upcoming, moves)
        canary_after = time_canary(kube, registry, prometheus, tenant_b, "watched", models["canary"], "3")
        flood.stop()
        phase("end")
        figures["after"] = timings(after, canary_after)
        figures["ratio"] = figures["after"]["median"] / figures["before"]["median"]
        figures["webhooks"] = flood.totals()
        figures["servers"] = servers.stats()
        status = process_status(pid)
        figures["rss_mib"] = {
            "now": status["VmRSS"] / MiB,
            "largest_sampled": rss.largest / MiB,
            "peak_VmHWM": status["VmHWM"] / MiB,
            "limit_half": memory_limit_bytes() / 2 / MiB,
            "largest_by_phase": dict(rss.phases),
        }
        figures["operator_cpu_seconds_by_phase"] = cpu
        figures["load_average_at_phase_end"] = load
        # What the operator's process and log say now, before it is stopped.
        log = own.log_path.read_text(errors="replace")
        figures["operator"] = {
            "running": own.process is not None and own.process.poll() is None and own.pid == pid,
            "starts": log.count("===== operator start"),
            "crashes": crashes_in(log)[:20],
            "parse_error_tracebacks": log.count(PARSE_ERROR),
        }
    return figures
