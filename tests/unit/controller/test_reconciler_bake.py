"""A bake through one reconcile pass (spec.rollback.bake): the pass takes the bake's reading from the
analyzer under its own key, the planner fails the bake, and the reconciler moves @production back
in the registry, Attempted in status before the write and Made after, only while @production still
names the baked version."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from builders import FixedObjects
from lightkube import AsyncClient
from reconciler_fakes import BODY, Cluster, Events, Registry

from aliasroll import reasons
from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.window import Window
from aliasroll.controller.analyzer import Analyzer
from aliasroll.controller.reconciler import Reconciler
from aliasroll.planning.canary import AnalysisResult
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller

NOW = datetime(2026, 12, 7, 12, 10, 0, tzinfo=UTC)
SPEC = {
    **BODY["spec"],
    "rollback": {
        "window": "30m",
        "bake": {
            "duration": "10m",
            "analysis": {"interval": "30s", "failureLimit": 2, "errorRate": {"maxPercent": 1}},
        },
    },
}
STATUS = {
    **BODY["status"],
    "production": {**BODY["status"]["production"], "version": "2", "modelUri": "models:/sentiment/2"},
    "registry": {"trackingUri": "http://mlflow:5000", "aliases": {"production": "2"}},
    "warm": [
        {
            "model": "sentiment",
            "version": "1",
            "since": "2026-12-07T12:00:00Z",
            "replicas": 2,
            "routed": False,
        }
    ],
    "bake": {
        "model": "sentiment",
        "version": "2",
        "previous": "1",
        "phase": "Baking",
        "startedAt": "2026-12-07T12:01:00Z",
        "failures": 1,
        "failureLimit": 2,
        "measuredAt": "2026-12-07T12:09:00Z",
    },
}


class Moving(Registry):
    """@production on version 2 until the operator moves it (only while it names what it expects)."""

    def __init__(self, production: str = "2") -> None:
        self.production = production
        self.changes: list[tuple[str, str, str | None]] = []

    async def change_alias(
        self, endpoint: Any, model: str, alias: str, *, expect: str, to: str | None
    ) -> Mapping[str, str]:
        found = {alias: self.production}
        self.changes.append((alias, expect, to))
        if self.production == expect and to is not None:
            self.production = to
        return found


class BakeReadings(Analyzer):
    """The analyzer with a finished bake reading: the version's errors over the interval."""

    def __init__(self) -> None:
        super().__init__(FixedObjects())
        self.asked: list[str] = []

    async def measure_bake(self, *, owner: Any, spec: Any, version: str, now: datetime, wake: Any) -> Any:
        self.asked.append(version)
        limits = Limits(min_canary_requests=20, max_error_percent=1.0)
        measured = judge(limits, canary=Window(requests=100, errors=9), production=Window())
        return AnalysisResult(version=version, measured_at=now, measurement=measured)


def one_pass(registry: Moving, analyzer: BakeReadings) -> tuple[Cluster, Events]:
    cluster = Cluster([])
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(),
        registry=cast(RegistryPoller, registry),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
        analyzer=analyzer,
        clock=lambda: NOW,
    )
    body = {**BODY, "spec": SPEC, "status": STATUS}
    asyncio.run(reconciler.reconcile(body, wake=lambda: None))
    return cluster, events


def test_a_failed_bake_moves_production_back_in_the_registry_once() -> None:
    registry, analyzer = Moving(), BakeReadings()
    cluster, events = one_pass(registry, analyzer)
    assert analyzer.asked == ["2"]
    assert registry.changes == [("production", "2", "1")]
    assert registry.production == "1"
    assert cluster.status is not None
    bake = cluster.status["bake"]
    assert (bake["phase"], bake["failures"], bake["aliasWrite"]) == ("Failed", 2, "Made")
    posted = [event.reason for event in events.posted]
    assert reasons.BAKE_FAILED in posted
    assert reasons.ALIAS_MOVED in posted


def test_a_human_s_move_made_just_before_the_write_wins() -> None:
    # @production names 3 in the registry by the time the operator writes: left as it is.
    registry, analyzer = Moving(), BakeReadings()

    class Raced(Moving):
        async def change_alias(
            self, endpoint: Any, model: str, alias: str, *, expect: str, to: str | None
        ) -> Any:
            self.changes.append((alias, expect, to))
            return {alias: "3"}

    raced = Raced()
    cluster, events = one_pass(raced, analyzer)
    assert raced.changes == [("production", "2", "1")]
    assert raced.production == "2"  # not moved by the operator
    assert cluster.status is not None
    assert cluster.status["bake"]["aliasWrite"] == "Attempted"  # never made a second time
    assert reasons.ALIAS_MOVED not in [event.reason for event in events.posted]
    assert registry.changes == []
