"""The canary run and its records, over random histories: a model-based property test.

A small world runs the real reconciler (observe, plan, apply, status, alias changes, events) against
an API server, a registry and a metrics source of its own, and hypothesis plays every hand it can:
measurements of each kind (passed, failed, inconclusive, unreadable, a baseline after a restart),
operator restarts (memory lost; a new leader is the same), registry outages, status writes that fail,
pods that start or not, human alias moves (@production to the canary's version, back, to a third;
@canary moved or deleted), spec edits generated from the CRD's own schema (steps lengthened or
shortened, weight <-> steps, analysis added or removed, router switched, replicas to 0 and back,
promotion and abort policy, progress deadline, suspend) and clock jumps. After every step:

- the operator writes @production at most once per run, and only while it still points where the
  run found it (read just before the write); @canary is removed only while it names the run's version;
- a step passes, and a promotion is decided, only on a Passed measurement whose window lies inside
  that step;
- failures of a run never exceed the failed measurements taken of it, and never go down;
- an aborted run's record (status, its event, its outcome tags) is in place before its @canary goes;
- a pass never raises, and the phase is one the spec in force allows;
- a step that holds asks for its next pass no sooner than its next reading, step end or deadline;
- with spec.replicas 0 no Deployment asks for a pod, under either router.

And at the end of every history the world quiets down (registry up, pods start, measurements pass,
time goes on): the run always comes to rest (Succeeded, Aborted, AwaitingPromotion, paused, or no
canary): nothing strands it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
import yaml
from builders import info, uid_required, written_status
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import api_info

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, MetricResult, Verdict
from aliasroll.controller.reconciler import PassResult, Reconciler
from aliasroll.controller.tag_writer import TagsState
from aliasroll.errors import InvalidSpec, KubernetesUnavailable, RegistryUnavailable
from aliasroll.planning import canary
from aliasroll.planning.canary import AnalysisResult, CanaryRun, Phase
from aliasroll.planning.gate import Verdict as gate_verdicts
from aliasroll.planning.state import EventRecord
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import ModelSnapshot, RegistryPoller
from aliasroll.registry.types import Endpoint
from aliasroll.serving.gate.message import (
    ERROR,
    FAILED,
    MISSING_COLUMN,
    PASSED,
    REASON_FAILED,
    REASON_PASSED,
    MetricReport,
    Report,
    encode,
)
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec
from aliasroll.spec.gate import parse_gate

REPO = Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((REPO / "crds" / "modeldeployments.aliasroll.io.yaml").read_text())
UID = "uid-model"
MODEL = "sentiment"
T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
VERSIONS = ("1", "2", "3", "4", "5")
#: What the histories reached, across all of them (test_canary_histories checks they reach each).
SEEN: Counter[str] = Counter()
# Durations the generator writes: the CRD's pattern narrowed to seconds and minutes below 100, so a
# history of a few dozen steps can see runs end (the CRD accepts hours; the planner treats them alike).
SHORT_DURATION = r"^[1-9][0-9]?(s|m)$"
GATE_DATA = ("runs:/0123456789abcdef0123456789abcdef/holdout.parquet", "mlflow-artifacts:/h/holdout.csv")
# How a gate Job ends, as the world chooses: its evaluator's verdict, or a Job that says nothing.
GATE_ENDS = ("passed", "failed", "error", "garbage", "silent", "deadline")


def from_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values a structural CRD schema accepts: objects (required properties always, the others
    sometimes), integers and numbers within their bounds, enums, booleans, arrays up to 4 items, and
    strings of the pattern a `self.matches(re)` CEL rule states (durations narrowed: SHORT_DURATION)."""
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kind == "object":
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        fields = {
            name: from_schema(sub) if name in required else st.one_of(st.none(), from_schema(sub))
            for name, sub in properties.items()
        }
        return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not None})
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items") or {}),
            min_size=int(schema.get("minItems", 0)),
            max_size=min(int(schema.get("maxItems", 4)), 4),
        )
    if kind == "integer":
        low, high = int(schema.get("minimum", -5)), int(schema.get("maximum", 1000))
        for validation in schema.get("x-kubernetes-validations") or ():
            # The CRD states some integers' bounds as CEL: `self >= 1 && self <= 100`.
            if bounds := re.fullmatch(r"self >= (-?\d+) && self <= (-?\d+)", str(validation.get("rule", ""))):
                low, high = int(bounds.group(1)), int(bounds.group(2))
        return st.integers(low, high)
    if kind == "number":
        return st.floats(
            float(schema.get("minimum", 0)),
            float(schema.get("maximum", 1000)),
            exclude_min=bool(schema.get("exclusiveMinimum")),
            allow_nan=False,
        )
    if kind == "boolean":
        return st.booleans()
    for validation in schema.get("x-kubernetes-validations") or ():
        text = str(validation.get("rule", ""))
        if text.startswith("self.startsWith('runs:/')"):
            return st.sampled_from(GATE_DATA)  # spec.canary.gate.data: an artifact URI of a table
        if text.startswith("self.matches('") and text.endswith("')"):
            pattern = text[len("self.matches('") : -2].replace("\\\\", "\\")
            return st.from_regex(SHORT_DURATION if "(ms|s|m|h)" in pattern else pattern, fullmatch=True)
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda text: len(text) <= int(schema.get("maxLength", 64))
        )
    return st.text(max_size=int(schema.get("maxLength", 20)))


def _canary_schema() -> dict[str, Any]:
    version = CRD["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    schema = copy.deepcopy(spec["canary"])
    # The analysis' Prometheus source is measured by another module's tests (it needs a server):
    # here every measurement comes from the world's own metrics source.
    schema["properties"]["analysis"]["properties"].pop("prometheus", None)
    schema["properties"].pop("alias", None)  # @canary: the world's alias names are fixed
    return cast(dict[str, Any], schema)


CANARY_SCHEMA = _canary_schema()


def accepted(raw: Mapping[str, Any]) -> ModelDeploymentSpec | None:
    try:
        return parse_spec(raw)
    except InvalidSpec:
        return None  # the CRD (its CEL rules) refuses it at apply time: never a spec the operator sees


def _valid_gate(gate: Mapping[str, Any]) -> bool:
    try:
        parse_gate(gate)
    except InvalidSpec:
        return False
    return True


def _repaired_gate(gate: dict[str, Any]) -> dict[str, Any]:
    """A drawn gate made to pass the CRD's rules across fields, as a user fixes what the API server
    refused: a bound for each metric, each metric once, a target."""
    thresholds: dict[str, dict[str, Any]] = {}
    for item in gate.get("thresholds") or ():
        item = dict(item)
        if not {"threshold", "minAbsoluteChange", "minRelativeChange"} & set(item):
            item["threshold"] = 0.5
        thresholds.setdefault(item["metric"], item)
    target = gate.get("target") or ""
    return {**gate, "thresholds": list(thresholds.values()), "target": target if target.strip() else "label"}


GATES = from_schema(CANARY_SCHEMA["properties"]["gate"]).map(_repaired_gate).filter(_valid_gate)


@st.composite
def canary_specs(draw: st.DrawFn) -> dict[str, Any]:
    raw = draw(from_schema(CANARY_SCHEMA))
    raw = {key: value for key, value in raw.items() if value is not None and key != "gate"}
    # `has(self.weight) != has(self.steps)`: one of the two, as the CRD's rule on the object says.
    if ("weight" in raw) == ("steps" in raw):
        raw.pop(draw(st.sampled_from(["weight", "steps"])), None)
        if "weight" not in raw and "steps" not in raw:
            raw["weight"] = draw(st.integers(0, 100))
    # The gate from its own schema, kept when the parser takes it: its rules across fields refuse
    # most random drafts, which would leave too few gated runs among the rest.
    gate = draw(st.one_of(st.none(), GATES))
    if gate is not None:
        raw["gate"] = gate
    spec = {
        "model": {"name": MODEL},
        "registry": {"trackingUri": "http://mlflow:5000", "pollInterval": "30s"},
        "replicas": draw(st.integers(0, 5)),
        "traffic": {"router": draw(st.sampled_from(["replicas", "gatewayAPI"]))},
        "canary": raw,
    }
    if raw.get("replicas") is not None and spec["traffic"]["router"] != "gatewayAPI":
        raw.pop("replicas")
    assume(accepted(spec) is not None)
    return spec


# ------------------------------------------------------------------------------------ the world


def api_error(code: int, message: str) -> ApiError:
    request = httpx2.Request("PATCH", "https://127.0.0.1:6443/x")
    status = {"kind": "Status", "message": message, "code": code, "reason": "InternalError"}
    return ApiError(request=request, response=httpx2.Response(code, json=status, request=request))


class Api:
    """The API server: the owned objects as applied (with a Deployment controller's status set by
    the world's `pods_start`), and the ModelDeployment's status."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.job_pods: dict[str, dict[str, Any]] = {}  # a gate Job's name -> its ended pod
        self.status: dict[str, Any] = {}
        self.fail_status_writes = 0
        self._uids = itertools.count(1)

    async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
        if (status := written_status(body)) is not None:
            assert uid_required(body) == UID, "a status write names the object it is for"
            if self.fail_status_writes:
                self.fail_status_writes -= 1
                raise api_error(500, "etcdserver: request timed out")
            self.status = copy.deepcopy(status)
            return
        key = (str(body["kind"]), name)
        before = self.objects.get(key)
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        meta["uid"] = before["metadata"]["uid"] if before else f"obj-{next(self._uids)}"
        generation = int(before["metadata"].get("generation", 1)) if before else 1
        if before is not None and before.get("spec") != obj.get("spec"):
            generation += 1
        meta["generation"] = generation
        obj["status"] = copy.deepcopy(before.get("status", {})) if before else {}
        self.objects[key] = obj

    async def delete(self, resource: Any, name: str, **_: Any) -> None:
        kind = api_info(resource).resource.kind
        self.objects.pop((kind, name), None)

    async def get(self, resource: Any, name: str, **_: Any) -> dict[str, Any]:
        kind = api_info(resource).resource.kind
        if (kind, name) not in self.objects:
            raise api_error(404, f"{kind} {name} not found")
        return self.objects[(kind, name)]

    def list(self, resource: Any, **_: Any) -> AsyncIterator[dict[str, Any]]:
        kind = api_info(resource).resource.kind
        found = [obj for (k, _), obj in self.objects.items() if k == kind]

        async def items() -> AsyncIterator[dict[str, Any]]:
            for obj in found:
                yield obj

        return items()

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {name: obj for (kind, name), obj in self.objects.items() if kind == "Deployment"}


class Objects:
    """The watch-fed cache: what the API server holds now."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        return [copy.deepcopy(obj) for obj in self.api.objects.values()]

    async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        """The gate Jobs' pods (serving pods are not modelled: Deployments carry their counts); a
        Job's pod goes with its Job, as the garbage collector takes it."""
        return [
            copy.deepcopy(pod) for job, pod in self.api.job_pods.items() if ("Job", job) in self.api.objects
        ]


@dataclass
class OperatorWrite:
    alias: str
    to: str | None
    found: str | None  # what the alias named when the operator read it just before
    run: str


class Registry:
    """MLflow's registry as the operator's poller shows it: the truth, the snapshot the last read
    took (a pass may see an older answer), outages, and every write the operator made."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {"production": "1", "canary": "2"}
        self.snapshot: dict[str, str] = dict(self.aliases)
        self.tags: dict[str, dict[str, str]] = {v: {} for v in VERSIONS}
        self.down = False
        self.writes: list[OperatorWrite] = []
        # Checked at each removal of @canary: the record is in place before the evidence goes.
        self.before_removal: list[str] = []
        self.status_of: Any = None

    def read(self) -> None:
        if not self.down:
            self.snapshot = dict(self.aliases)

    async def subscribe(self, **_: Any) -> ModelSnapshot:
        if self.down:
            return ModelSnapshot(model=MODEL, aliases=None, error=RegistryUnavailable("the registry is down"))
        return ModelSnapshot(model=MODEL, aliases=dict(self.snapshot), error=None)

    def unsubscribe(self, subscriber: Any) -> None:
        pass

    async def version(self, endpoint: Endpoint, model: str, version: str, **_: Any) -> Any:
        if self.down:
            raise RegistryUnavailable("the registry is down")
        return info(version)

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        if self.down:
            raise RegistryUnavailable("the registry is down")
        self.tags.setdefault(version, {}).update(tags)

    async def change_alias(
        self, endpoint: Endpoint, model: str, alias: str, *, expect: str, to: str | None
    ) -> dict[str, str]:
        if self.down:
            raise RegistryUnavailable("the registry is down")
        found = dict(self.aliases)
        run = to if to is not None else expect
        if found.get(alias) == expect:
            if to is None:
                self.before_removal.append(run)
                del self.aliases[alias]
            else:
                self.aliases[alias] = to
            self.writes.append(OperatorWrite(alias, to, found.get(alias), run))
        self.read()  # the poller reads the model again after an alias write
        return found


class Tags:
    """The tag writer, writing at once, and keeping what was refused to write it later, as the
    deferred writer does (it has tests of its own)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.refused: list[tuple[str, Any]] = []

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Any, wake: Any
    ) -> TagsState:
        problems = []
        todo, self.refused = [*self.refused, *((model, write) for write in writes)], []
        for named, write in todo:
            try:
                await self.registry.set_version_tags(endpoint, named, write.version, write.tags)
            except RegistryUnavailable as error:
                problems.append(error.message)
                self.refused.append((named, write))
        return TagsState(problems=tuple(problems))

    def progressed(self) -> None:
        pass

    def registry_answered(self, endpoint: Endpoint) -> None:
        pass

    def forget(self, uid: str) -> None:
        pass


class Metrics:
    """The canary's metrics source: the next reading's outcome is the world's to choose. Like the pods'
    /metrics reader, a first reading (or the first after a restart: its memory is the process's) is
    a baseline, and a reading judges the window since the one before."""

    def __init__(self) -> None:
        self.next: str = "passed"
        self.last_read: datetime | None = None
        self.failed: dict[tuple[str, str], int] = {}  # (model, version) -> failed measurements taken

    async def measure(
        self, *, run: CanaryRun, now: datetime, spec: ModelDeploymentSpec, **_: Any
    ) -> AnalysisResult:
        since, self.last_read = self.last_read, now
        if self.next == "unreadable":
            return AnalysisResult(
                version=run.version, measured_at=now, error="no serving pod answered /metrics"
            )
        if since is None:
            return AnalysisResult(version=run.version, measured_at=now)
        verdict = {"passed": Verdict.PASSED, "failed": Verdict.FAILED, "inconclusive": Verdict.INCONCLUSIVE}[
            self.next
        ]
        if verdict is Verdict.FAILED:
            key = (spec.model.name, run.version)
            self.failed[key] = self.failed.get(key, 0) + 1
        metric = MetricResult(
            metric="errorRate",
            canary=0.0 if verdict is Verdict.PASSED else 40.0,
            production=0.0,
            bound=1.0,
            bound_kind="absolute",
            verdict=verdict,
            message=f"error rate {verdict}",
        )
        measurement = Measurement(
            verdict=verdict,
            metrics=() if verdict is Verdict.INCONCLUSIVE else (metric,),
            canary_requests=3 if verdict is Verdict.INCONCLUSIVE else 500,
            production_requests=5000,
            message="too little canary traffic"
            if verdict is Verdict.INCONCLUSIVE
            else f"error rate {verdict}",
        )
        return AnalysisResult(
            version=run.version, measured_at=now, measurement=measurement, window_start=since
        )

    def measuring(self, uid: str) -> bool:
        return False  # every reading is answered in the pass that asks for it

    def forget(self, uid: str) -> None:
        self.last_read = None

    async def aclose(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.posted: list[EventRecord] = []

    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        self.posted.append(event)


@dataclass
class World:
    api: Api = field(default_factory=Api)
    registry: Registry = field(default_factory=Registry)
    metrics: Metrics = field(default_factory=Metrics)
    events: Events = field(default_factory=Events)
    now: datetime = T0
    spec: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    reconciler: Reconciler | None = None
    last: PassResult | None = None
    gate_ends: dict[str, str] = field(default_factory=dict)  # a gate Job's name -> how it ended

    def start_operator(self) -> None:
        """A new process (a restart, or another leader): nothing remembered but what status says."""
        self.metrics.last_read = None
        self.reconciler = Reconciler(
            client=cast(AsyncClient, self.api),
            objects=Objects(self.api),
            registry=cast(RegistryPoller, self.registry),
            events=self.events,
            defaults=WorkloadDefaults(image="aliasroll/serving:test"),
            analyzer=cast(Any, self.metrics),
            tags=Tags(self.registry),
            clock=lambda: self.now,
        )

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "aliasroll.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"namespace": "ml", "name": MODEL, "uid": UID, "generation": self.generation},
            "spec": copy.deepcopy(self.spec),
            "status": copy.deepcopy(self.api.status),
        }

    def run_pass(self) -> PassResult:
        assert self.reconciler is not None
        self.last = asyncio.run(self.reconciler.reconcile(self.body(), wake=lambda: None))
        return self.last

    def pods_start(self) -> None:
        """The Deployment controller and the kubelet: every Deployment's pods run its template, ready."""
        for obj in self.api.deployments().values():
            replicas = int(obj["spec"].get("replicas", 1))
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
                "readyReplicas": replicas,
            }

    def run(self) -> CanaryRun | None:
        return canary.recorded_run(self.api.status)

    def gate_jobs_end(self, how: str) -> None:
        """Every gate Job still running ends `how` (GATE_ENDS): its condition, and its pod's message."""
        for (kind, name), job in self.api.objects.items():
            if kind != "Job" or job["status"].get("conditions"):
                continue
            env = {
                item["name"]: item.get("value")
                for item in job["spec"]["template"]["spec"]["containers"][0]["env"]
            }
            metrics = list(json.loads(env["ALIASROLL_GATE_THRESHOLDS"]))
            self.gate_ends[name] = how
            condition = {"type": "Complete", "status": "True"}
            if how in ("error", "garbage", "silent", "deadline"):
                condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
            if how == "deadline":
                condition["reason"] = "DeadlineExceeded"
            job["status"] = {"conditions": [condition]}
            # The evaluator's own encoder (aliasroll/serving/gate/message.py): the operator reads
            # what the Job really writes.
            report = {
                "passed": Report(PASSED, REASON_PASSED, _judged(metrics, ok=True), run_id="0a1b2c"),
                "failed": Report(FAILED, REASON_FAILED, _judged(metrics, ok=False), run_id="0a1b2c"),
                "error": Report(ERROR, MISSING_COLUMN),
            }.get(how)
            text = encode(report).decode() if report else ("{not json" if how == "garbage" else None)
            terminated: dict[str, Any] = {"exitCode": 0 if how in ("passed", "failed") else 1}
            if text is not None:
                terminated["message"] = text
            self.api.job_pods[name] = {
                "metadata": {
                    "name": f"{name}-x",
                    "ownerReferences": [{"kind": "Job", "name": name, "controller": True}],
                },
                "status": {
                    "containerStatuses": [{"name": "model-server", "state": {"terminated": terminated}}]
                },
            }


def _judged(metrics: list[str], *, ok: bool) -> tuple[MetricReport, ...]:
    """The evaluator's metrics: all met, or the first one not."""
    return tuple(
        MetricReport(name=name, candidate=0.9 if ok or i else 0.5, baseline=0.8, bound=0.8, ok=ok or i > 0)
        for i, name in enumerate(metrics)
    )


def parsed(world: World) -> ModelDeploymentSpec:
    spec = accepted(world.spec)
    assert spec is not None, world.spec
    return spec


# ------------------------------------------------------------------------------------ the machine


class CanaryHistories(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.world.spec = {
            "model": {"name": MODEL},
            "registry": {"trackingUri": "http://mlflow:5000", "pollInterval": "30s"},
            "replicas": 3,
            "canary": {
                "steps": [{"weight": 20, "duration": "1m"}, {"weight": 50, "duration": "1m"}],
                "analysis": {"interval": "10s", "failureLimit": 2, "errorRate": {"maxPercent": 1}},
                "promotion": "auto",
            },
        }
        self.world.start_operator()
        self.previous_status: dict[str, Any] = {}
        self.previous_spec: dict[str, Any] = copy.deepcopy(self.world.spec)
        # Runs as the history saw them: a new id when @canary names another version or a run of the
        # same version starts again after one ended.
        self.run_id = 0
        self.run_key: tuple[str | None, str] | None = None
        self.production_writes: dict[int, int] = {}
        self.started_from: dict[int, str | None] = {}  # run -> where @production pointed when it began
        self.writes_seen = 0
        self.served_runs: set[int] = set()  # runs whose canary Deployment asked for pods
        self.world.run_pass()
        self.world.pods_start()

    # --- what happens ---------------------------------------------------------------------------

    @rule(seconds=st.one_of(st.integers(1, 70), st.integers(70, 4000)))
    def time_passes(self, seconds: int) -> None:
        self.world.now += timedelta(seconds=seconds)
        self.world.registry.read()  # a poll meanwhile
        self._pass()

    @rule(seconds=st.integers(5, 40), passes=st.integers(1, 8))
    def things_go_well_for_a_while(self, seconds: int, passes: int) -> None:
        """Pods start and time passes, pass after pass: how runs get anywhere between mishaps."""
        for _ in range(passes):
            self.world.pods_start()
            self.world.now += timedelta(seconds=seconds)
            self.world.registry.read()
            self._pass()

    @rule()
    def a_pass(self) -> None:
        self._pass()

    @rule()
    def pods_start(self) -> None:
        self.world.pods_start()
        self._pass()

    @rule(outcome=st.sampled_from(["passed", "failed", "inconclusive", "unreadable"]))
    def the_next_reading_is(self, outcome: str) -> None:
        self.world.metrics.next = outcome

    @rule(how=st.sampled_from(GATE_ENDS))
    def gate_jobs_end(self, how: str) -> None:
        self.world.gate_jobs_end(how)
        self._pass()

    @rule(down=st.booleans())
    def registry_outage(self, down: bool) -> None:
        self.world.registry.down = down
        self.world.registry.read()

    @rule(count=st.integers(1, 2))
    def status_writes_fail(self, count: int) -> None:
        self.world.api.fail_status_writes = count
        self._pass()

    @rule()
    def operator_restarts(self) -> None:
        self.world.start_operator()
        self._pass()

    @rule(target_=st.sampled_from(["canary", "back", "third"]), read=st.booleans())
    def human_moves_production(self, target_: str, read: bool) -> None:
        aliases = self.world.registry.aliases
        run = self.world.run()
        if target_ == "canary" and "canary" in aliases:
            aliases["production"] = aliases["canary"]
        elif target_ == "back" and run is not None and run.promoting_from is not None:
            aliases["production"] = run.promoting_from
        else:
            used = set(aliases.values())
            aliases["production"] = next(v for v in VERSIONS if v not in used) if len(used) < 5 else "1"
        if read:
            self.world.registry.read()  # seen by the next pass (a webhook), or only later (a poll)
        self._pass()

    @rule(version=st.sampled_from([*VERSIONS, None]), read=st.booleans())
    def human_moves_canary(self, version: str | None, read: bool) -> None:
        if version is None:
            self.world.registry.aliases.pop("canary", None)
        else:
            self.world.registry.aliases["canary"] = version
        if read:
            self.world.registry.read()
        self._pass()

    @rule(data=st.data())
    def spec_is_edited(self, data: st.DataObject) -> None:
        self.world.spec = data.draw(canary_specs())
        self.world.generation += 1
        self._pass()

    @rule(data=st.data())
    def gate_is_set_or_removed(self, data: st.DataObject) -> None:
        """spec.canary.gate alone is edited: set (drawn from its schema), changed or removed."""
        gate = data.draw(st.one_of(st.none(), GATES))
        canary_spec = {key: value for key, value in self.world.spec["canary"].items() if key != "gate"}
        edited = {**self.world.spec, "canary": canary_spec if gate is None else {**canary_spec, "gate": gate}}
        if accepted(edited) is not None:
            self.world.spec = edited
            self.world.generation += 1
        self._pass()

    @rule(data=st.data(), how=st.sampled_from(GATE_ENDS))
    def a_new_version_meets_the_gate(self, data: st.DataObject, how: str) -> None:
        """Under a gate (drawn, if the spec has none), @canary moves to a version it does not name,
        a pass starts its Job, and the Job ends `how`: the gate's whole turn, in one rule."""
        if "gate" not in self.world.spec["canary"]:
            edited = {**self.world.spec, "canary": {**self.world.spec["canary"], "gate": data.draw(GATES)}}
            if accepted(edited) is None:
                return
            self.world.spec = edited
            self.world.generation += 1
        aliases = self.world.registry.aliases
        run = self.world.run()
        taken = {*aliases.values(), run.version if run is not None else ""}
        aliases["canary"] = next((v for v in VERSIONS if v not in taken), "5")
        self.world.registry.read()
        self._pass()
        self.world.gate_jobs_end(how)
        self._pass()

    @rule(suspend=st.booleans())
    def suspend(self, suspend: bool) -> None:
        self.world.spec = {**self.world.spec, "suspend": suspend}
        self.world.generation += 1
        self._pass()

    def _pass(self) -> None:
        world = self.world
        self.previous_status = copy.deepcopy(world.api.status)
        self.previous_spec = copy.deepcopy(world.spec)
        result = world.run_pass()  # raises if a pass raises: the planner never does
        assert isinstance(result, PassResult)
        self._check_pass(result)

    # --- after every pass -------------------------------------------------------------------------

    def _check_pass(self, result: PassResult) -> None:
        world, spec = self.world, parsed(self.world)
        before, after = canary.recorded_run(self.previous_status), world.run()
        self._follow_runs(before, after)
        self._count(before, after)
        if isinstance(result.failed, KubernetesUnavailable):
            return  # status was not written: nothing happened that the checks below could see
        # A step passes only on a Passed measurement whose whole window lies inside it.
        if (
            before is not None
            and after is not None
            and (before.model, before.version) == (after.model, after.version)
            and spec.canary is not None
            and spec.canary.analysis is not None
            and spec.canary.steps
            and self.previous_spec.get("canary", {}).get("steps") == self.world.spec["canary"].get("steps")
            and self.previous_spec.get("canary", {}).get("analysis") is not None
            and before.phase is Phase.ANALYZING
            and (after.step_index > before.step_index)
        ):
            assert after.verdict is Verdict.PASSED, (before, after)
            assert after.window_start is not None
            assert before.step_started_at is not None
            assert after.window_start >= before.step_started_at, (before, after)
        # A held step is not passed again before its next event (nor later than the next poll: a
        # resource with something under way is passed every poll interval).
        if (
            after is not None
            and after.message.startswith(canary.HOLDING)
            and spec.canary is not None
            and spec.canary.analysis is not None
            and result.next_in is not None
            and result.failed is None
        ):
            gaps = [spec.canary.analysis.interval_seconds]
            if spec.canary.progress_deadline_seconds and after.waiting_since is not None:
                gaps.append(
                    (
                        after.waiting_since
                        + timedelta(seconds=spec.canary.progress_deadline_seconds)
                        - world.now
                    ).total_seconds()
                )
            if after.read_at is not None:
                gaps.append(
                    (
                        after.read_at + timedelta(seconds=spec.canary.analysis.interval_seconds) - world.now
                    ).total_seconds()
                )
            assert (
                result.next_in
                >= min(max(1.0, min(gaps)), spec.canary.analysis.interval_seconds, spec.registry.poll_seconds)
                - 0.001
            ), (
                result.next_in,
                gaps,
            )
        # The phase is one the spec in force allows.
        if after is not None and not after.ended and spec.canary is not None and result.failed is None:
            if after.phase is Phase.ANALYZING:
                assert spec.canary.analysis is not None, after
                assert spec.canary.steps, after
            if after.phase is Phase.PROGRESSING and spec.canary.steps and spec.canary.analysis is not None:
                assert after.step_started_at is None or after.step_index >= len(spec.canary.steps), after
        self._check_gate(spec, before, after)
        # Zero replicas: no Deployment asks for a pod, whatever the router.
        if spec.replicas == 0 and result.failed is None:
            asked = {name: obj["spec"].get("replicas") for name, obj in world.api.deployments().items()}
            assert all(replicas == 0 for replicas in asked.values()), asked

    def _check_gate(
        self, spec: ModelDeploymentSpec, before: CanaryRun | None, after: CanaryRun | None
    ) -> None:
        """A version spec.canary.gate has not cleared gets no pod and no share; a gate clears only on
        a verdict its Job gave: passed, or any verdict with dryRun."""
        if (
            before is not None
            and after is not None
            and (before.phase, after.phase) == (Phase.GATING, Phase.ABORTED)
        ):
            SEEN["gate aborted a run"] += 1
            # Aborted on a verdict the Job gave (or a Job that gave none), never on its own.
            assert after.gate is not None, after
            assert self.world.gate_ends.get(after.gate.job, "passed") != "passed", after
        if after is None or after.ended or spec.canary is None:
            return
        gate = after.gate
        if self._canary_pods(after.version):
            self.served_runs.add(self.run_id)
        # A run that began under a gate and has had no pod (its gate was not removed meanwhile).
        held = gate is not None and not gate.cleared and self.run_id not in self.served_runs
        if spec.canary.gate is not None and held:
            SEEN["gate held a version"] += 1
            assert self.world.api.status["canary"]["weight"] == 0, self.world.api.status["canary"]
            assert not self._canary_pods(after.version), after
        was_cleared = (
            before is not None
            and before.gate is not None
            and before.gate.cleared
            and before.version == after.version
        )
        if gate is not None and gate.cleared and not was_cleared:
            ended = self.world.gate_ends.get(gate.job)
            assert ended is not None, f"a gate cleared that no Job of the world ended: {gate}"
            assert ended == "passed" or (spec.canary.gate is not None and spec.canary.gate.dry_run), (
                gate,
                ended,
            )
            assert (gate.verdict is gate_verdicts.PASSED) == (ended == "passed"), (gate, ended)
            SEEN["gate cleared"] += 1

    def _canary_pods(self, version: str) -> bool:
        """Whether a canary Deployment of `version` asks for pods."""
        return any(
            obj["metadata"]["labels"].get("aliasroll.io/track") == "canary"
            and obj["metadata"]["labels"].get("aliasroll.io/model-version") == version
            and obj["spec"].get("replicas", 1) > 0
            for obj in self.world.api.deployments().values()
        )

    def _count(self, before: CanaryRun | None, after: CanaryRun | None) -> None:
        if after is None or before is None or (before.model, before.version) != (after.model, after.version):
            return
        if after.phase is Phase.ABORTED and before.phase is not Phase.ABORTED:
            SEEN["run aborted"] += 1
        if after.step_index > before.step_index:
            SEEN["step passed"] += 1
        if before.phase is Phase.PROMOTING and after.phase is Phase.AWAITING_PROMOTION:
            SEEN["promotion called off"] += 1

    def _follow_runs(self, before: CanaryRun | None, after: CanaryRun | None) -> None:
        """Attributes the operator's @production writes of this pass to the run they belong to, and
        checks each run writes it at most once, and never after a human moved it during the run."""
        if after is not None:
            key = (after.model, after.version)
            restarted = before is not None and before.ended and not after.ended
            if key != self.run_key or restarted:
                self.run_id += 1
                self.run_key = key
                self.started_from[self.run_id] = after.promoting_from
        new = self.world.registry.writes[self.writes_seen :]
        self.writes_seen = len(self.world.registry.writes)
        for write in new:
            if write.alias != "production":
                continue
            self.production_writes[self.run_id] = self.production_writes.get(self.run_id, 0) + 1
            SEEN["@production moved by the operator"] += 1
            assert self.production_writes[self.run_id] <= 1, f"@production written twice in run {self.run_id}"
            # Made only while @production (read just before) pointed where it did when the run began:
            # a human's move of it, before the write or after, is never overwritten.
            assert write.found == self.started_from.get(self.run_id), (write, self.started_from)

    @invariant()
    def every_alias_move_is_announced_once(self) -> None:
        moves = [w for w in self.world.registry.writes if w.alias == "production"]
        promoted = [e for e in self.world.events.posted if e.reason == reasons.ALIAS_MOVED]
        assert len(moves) >= len(promoted), "a move announced that was not made"

    @invariant()
    def canary_is_removed_only_from_the_aborted_version_after_its_record(self) -> None:
        registry = self.world.registry
        for write in registry.writes:
            if write.alias == "canary":
                assert write.to is None
                assert write.found == write.run
        for version in registry.before_removal:
            tags = registry.tags.get(version, {})
            assert tags.get("aliasroll.io/canary.outcome") == "aborted", (version, tags)
        registry.before_removal.clear()

    @invariant()
    def failures_never_exceed_the_failed_measurements_taken(self) -> None:
        run = self.world.run()
        if run is None or run.model is None:
            return
        key = (run.model, run.version)
        taken = self.world.metrics.failed.get(key, 0)
        assert run.failures <= taken, (run, taken)

    def teardown(self) -> None:
        """The world quiets down: nothing strands a run."""
        world = self.world
        world.registry.down = False
        world.api.fail_status_writes = 0
        world.metrics.next = "passed"
        world.registry.read()
        spec = accepted(world.spec)
        if spec is None or spec.canary is None or spec.suspend:
            return  # suspended: nothing moves, by the user's choice
        for _ in range(400):
            world.pods_start()
            world.gate_jobs_end("passed")
            world.now += timedelta(seconds=300)
            world.registry.read()
            self._pass()  # checked as every other pass
            run = world.run()
            if run is None or run.ended or run.phase in (Phase.AWAITING_PROMOTION, Phase.PAUSED):
                return
            if spec.replicas == 0 and not spec.canary.progress_deadline_seconds:
                return  # no pods asked for, and no deadline: it waits, as the user set it
            if run.phase is Phase.PROMOTING and world.registry.aliases.get("production") == run.version:
                continue  # production rolls; pods_start ends it
        raise AssertionError(f"the run never came to rest: {world.run()}\n{world.api.status}")


# The default run (CI's) takes the same 100 histories every time: its coverage check below may not
# depend on luck. ALIASROLL_CANARY_HISTORIES=<n> explores n new ones on each run.
EXPLORE = os.environ.get("ALIASROLL_CANARY_HISTORIES")
HISTORIES = settings(
    max_examples=int(EXPLORE or "100"),
    derandomize=EXPLORE is None,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def test_canary_histories() -> None:
    SEEN.clear()
    run_state_machine_as_test(CanaryHistories, settings=HISTORIES)
    # The histories reached what the invariants are about (else they would hold vacuously). Rarer
    # turns, such as a promotion called off, have named cases in test_canary_defects.py.
    for outcome in (
        "@production moved by the operator",
        "run aborted",
        "step passed",
        "gate held a version",
        "gate cleared",
        "gate aborted a run",
    ):
        assert SEEN[outcome] > 0, (outcome, SEEN)


@pytest.mark.parametrize("seed", [0])
def test_the_generator_makes_specs_the_crd_accepts(seed: int) -> None:
    """The strategy draws from the CRD's schema and keeps what the operator's parser accepts."""
    found = []

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @__import__("hypothesis").given(canary_specs())
    def collect(raw: dict[str, Any]) -> None:
        found.append(raw)

    collect()
    kinds = {("steps" in raw["canary"], "analysis" in raw["canary"]) for raw in found}
    assert len(kinds) >= 2, kinds
    assert all(isinstance(raw["canary"], dict) for raw in found)
