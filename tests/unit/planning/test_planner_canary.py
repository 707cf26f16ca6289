"""The whole planner through a watched canary, on a cluster whose pods are ready at once: steps set
the split, an abort drains the canary and keeps its record (status.lastCanary, the history's span),
an automatic promotion moves the alias and ends Succeeded with its outcome recorded, status names
no canary once none runs, and no event is told twice."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from builders import NOW, OWNER, observed, spec, view, workload

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, MetricResult, Verdict
from aliasroll.planning.canary import AnalysisResult
from aliasroll.planning.planner import Plan, plan
from aliasroll.planning.registry_writes import AliasChange, TagVersion
from aliasroll.planning.state import ObservedState, RegistryView
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, Track

P, C = Track.PRODUCTION, Track.CANARY
STEPS = [{"weight": 10, "duration": "1m"}, {"weight": 30, "duration": "1m"}, {"weight": 50, "duration": "1m"}]


def stepped(**canary: Any) -> ModelDeploymentSpec:
    fields = {"alias": "canary", "steps": STEPS} | canary
    return spec(canary=fields, replicas=10)


class Cluster:
    """Deployments as the last plan wrote them, every pod ready at once."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.pods: dict[Track, tuple[str, int]] = {}
        self.events: list[str] = []
        self.plans: list[Plan] = []

    def observed(self) -> ObservedState:
        return observed(*(workload(t, v, replicas=n) for t, (v, n) in self.pods.items()))

    def step(
        self,
        the_spec: ModelDeploymentSpec,
        the_view: RegistryView,
        seconds: float,
        analysis: AnalysisResult | None = None,
    ) -> Plan:
        result = plan(
            owner=OWNER,
            spec=the_spec,
            view=the_view,
            observed=self.observed(),
            previous_status=self.status,
            now=NOW + timedelta(seconds=seconds),
            defaults=WorkloadDefaults(image="aliasroll/serving:test"),
            analysis=analysis,
        )
        self.pods = {}
        for item in result.objects:
            if item["kind"] == "Deployment":
                labels = item["spec"]["template"]["metadata"]["labels"]
                track = Track(labels["aliasroll.io/track"])
                self.pods[track] = (labels["aliasroll.io/model-version"], item["spec"]["replicas"])
        self.status = result.status
        self.events += [event.reason for event in result.events]
        self.plans.append(result)
        return result

    def split(self) -> dict[str, int]:
        return {t.value: n for t, (_, n) in self.pods.items()}


def verdict(which: Verdict, seconds: float) -> AnalysisResult:
    metric = MetricResult("errorRate", 25.0, 0.0, 1.0, "absolute", which, f"error rate {which}")
    measurement = Measurement(
        which, (metric,), 400, 4000, f"canary error rate 25.00% > limit 1.00% ({which})"
    )
    return AnalysisResult(version="3", measured_at=NOW + timedelta(seconds=seconds), measurement=measurement)


def test_steps_set_the_split_one_after_another() -> None:
    cluster, the_spec = Cluster(), stepped()
    cluster.step(the_spec, view("2"), 0)
    seen: list[tuple[str, str, dict[str, int]]] = []
    started: list[str] = []
    for second in range(1, 200):
        cluster.step(the_spec, view("2", "3"), second)
        canary = cluster.status["canary"]
        state = (canary["phase"], canary.get("step", ""), cluster.split())
        if not seen or seen[-1] != state:
            seen.append(state)
        if canary.get("stepStartedAt") and canary["stepStartedAt"] not in started:
            started.append(canary["stepStartedAt"])
    in_place = [
        state
        for state in seen
        if state[2]
        in ({"production": 9, "canary": 1}, {"production": 7, "canary": 3}, {"production": 5, "canary": 5})
    ]
    steps = list(dict.fromkeys((step, split["canary"]) for _, step, split in in_place))
    assert steps == [("1/3", 1), ("2/3", 3), ("3/3", 5)]
    assert seen[-1][0] == "AwaitingPromotion"
    # Each step lasts its minute from the pass its split was in place.
    assert started == ["2026-11-23T12:00:03Z", "2026-11-23T12:01:05Z", "2026-11-23T12:02:07Z"]
    assert Counter(cluster.events)[reasons.CANARY_STEP] == 3
    assert cluster.events.count(reasons.AWAITING_PROMOTION) == 1


def test_an_abort_drains_the_canary_and_keeps_its_record() -> None:
    cluster = Cluster()
    the_spec = stepped(analysis={"interval": "10s", "failureLimit": 1, "errorRate": {"maxPercent": 1}})
    cluster.step(the_spec, view("2"), 0)
    for second in (1, 2, 3):  # pods up, then the split in place
        cluster.step(the_spec, view("2", "3"), second)
    assert cluster.status["canary"]["phase"] == "Analyzing"
    cluster.step(the_spec, view("2", "3"), 12, analysis=verdict(Verdict.FAILED, 12))
    assert cluster.status["canary"]["phase"] == "Aborted"
    assert cluster.status["traffic"]["requestedCanaryWeight"] == 0
    # Its pods drain: status.canary still names them, and says how the run ended.
    assert (cluster.status["canary"]["version"], cluster.status["canary"]["phase"]) == ("3", "Aborted")
    for second in range(13, 20):
        cluster.step(the_spec, view("2", "3"), second)
    assert cluster.split() == {"production": 10}
    assert "canary" not in cluster.status, "no canary runs: status names none"
    assert cluster.status["traffic"]["canaryWeight"] == 0
    record = cluster.status["lastCanary"]
    assert (record["phase"], record["version"], record["step"]) == ("Aborted", "3", "1/3")
    assert "error rate" in record["message"]
    assert record["analysis"]["metrics"][0]["verdict"] == "Failed"
    ready = next(c for c in cluster.status["conditions"] if c["type"] == reasons.CANARY_HEALTHY)
    assert (ready["status"], ready["reason"]) == ("False", reasons.CANARY_ABORTED)
    assert cluster.events.count(reasons.CANARY_ABORTED) == 1
    spans = [h for h in cluster.status["history"] if h["track"] == "canary"]
    assert len(spans) == 1
    assert "to" in spans[0], "the canary's span is closed once and never reopened"
    assert spans[0]["outcome"] == "Aborted"
    last = cluster.plans[-1]
    outcome = [w for w in last.writes if isinstance(w, TagVersion) and w.version == "3"]
    assert outcome[0].tags["aliasroll.io/canary.outcome"] == "aborted"


def test_auto_promotion_moves_the_alias_then_production_rolls_and_it_succeeds() -> None:
    cluster, the_spec = Cluster(), stepped(promotion="auto")
    cluster.step(the_spec, view("2"), 0)
    second = 1
    while cluster.status.get("canary", {}).get("phase") != "Promoting":
        cluster.step(the_spec, view("2", "3"), second)
        second += 1
        assert second < 400
    moves = [w for w in cluster.plans[-1].writes if isinstance(w, AliasChange)]
    assert [(m.alias, m.expect, m.to) for m in moves] == [("production", "2", "3")]
    # The registry now says production is 3 (the canary alias stays on 3 too).
    for later in range(second, second + 5):
        cluster.step(the_spec, view("3", "3"), later)
    assert cluster.split() == {"production": 10}
    assert cluster.pods[P][0] == "3"
    assert "canary" not in cluster.status, "no canary runs: status names none"
    record = cluster.status["lastCanary"]
    assert (record["phase"], record["version"], record["step"]) == ("Succeeded", "3", "3/3")
    spans = [(h["track"], h["version"], h.get("outcome")) for h in cluster.status["history"]]
    assert spans == [("production", "2", None), ("canary", "3", "Succeeded"), ("production", "3", None)]
    assert not [w for w in cluster.plans[-1].writes if isinstance(w, AliasChange)], "moved once, not again"
    assert cluster.events.count(reasons.CANARY_PROMOTING) == 1
    assert cluster.events.count(reasons.CANARY_PROMOTED) == 1
