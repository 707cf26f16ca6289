"""The analyzer's bake readings (spec.rollback.bake): the baked version alone, kept under a key of its
own beside a canary run's readings, and forgotten with the resource."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from builders import NOW, OWNER, FixedObjects, spec

from aliasroll.analysis import AnalysisTarget, TrackWindows, Verdict, Window
from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.controller.analyzer import Analyzer
from aliasroll.planning.bake import reading_key
from aliasroll.planning.canary import CanaryRun, Phase
from aliasroll.spec import AnalysisSpec, BakeSpec, ModelDeploymentSpec, RollbackSpec

FAILING = Window(requests=100, errors=9, buckets=((0.1, 100), (float("inf"), 100)))


def baked() -> ModelDeploymentSpec:
    rules = AnalysisSpec(
        interval_seconds=30,
        min_requests=20,
        failure_limit=2,
        max_error_percent=1.0,
        max_error_increase_points=0.5,
    )
    the_spec = spec(
        canary={
            "alias": "canary",
            "steps": [{"weight": 20, "duration": "1m"}],
            "analysis": {"interval": "30s", "minRequests": 20, "errorRate": {"maxPercent": 1}},
        }
    )
    return replace(the_spec, rollback=RollbackSpec(window_seconds=1800, bake=BakeSpec(600, rules)))


class Keyed:
    """A metrics provider that answers per key, slowly enough for two readings to overlap."""

    def __init__(self) -> None:
        self.asked: list[AnalysisTarget] = []
        self.forgotten: list[str] = []
        self.release = asyncio.Event()

    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        self.asked.append(target)
        await self.release.wait()
        production = Window() if not target.production_version else Window(requests=1000)
        return TrackWindows(canary=FAILING, production=production, seconds=30)

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    async def aclose(self) -> None:
        pass


def gated(name: str, version: str, *, ready: bool) -> Mapping[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"aliasroll.io/gated": "true", "aliasroll.io/model-version": version},
        },
        "status": {
            "podIP": "10.0.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


PODS = [gated("v2-a", "2", ready=True), gated("v1-a", "1", ready=False), gated("v3-a", "3", ready=True)]


async def test_a_bake_reading_measures_its_version_alone_and_a_canary_s_beside_it() -> None:
    provider = Keyed()
    analyzer = Analyzer(FixedObjects(pods=PODS), pods=provider)
    woken = asyncio.Event()
    the_spec = baked()

    async def bake_pass() -> Any:
        return await analyzer.measure_bake(owner=OWNER, spec=the_spec, version="2", now=NOW, wake=woken.set)

    async def canary_pass() -> Any:
        return await analyzer.measure(
            owner=OWNER,
            spec=the_spec,
            run=CanaryRun(version="3", phase=Phase.ANALYZING),
            previous_status={"production": {"version": "2"}},
            now=NOW,
            wake=woken.set,
        )

    assert await bake_pass() is None
    assert await canary_pass() is None  # does not replace the bake's reading under way
    assert analyzer.measuring(reading_key(OWNER.uid))
    assert analyzer.measuring(OWNER.uid)
    provider.release.set()
    for _ in range(50):
        if not analyzer.measuring(OWNER.uid) and not analyzer.measuring(reading_key(OWNER.uid)):
            break
        await asyncio.sleep(0.01)
    keys = {target.key: target for target in provider.asked}
    assert set(keys) == {OWNER.uid, reading_key(OWNER.uid)}
    alone = keys[reading_key(OWNER.uid)]
    assert (alone.production_version, alone.canary_version, alone.production_pods) == ("", "2", ())
    assert [pod.name for pod in alone.canary_pods] == ["v2-a"]
    baked_result = await bake_pass()
    assert baked_result is not None
    assert baked_result.version == "2"
    assert baked_result.measurement.verdict is Verdict.FAILED
    assert "relative bound skipped" in baked_result.measurement.message
    canary_result = await canary_pass()
    assert canary_result is not None
    assert canary_result.version == "3"
    await analyzer.aclose()


async def test_forgetting_a_resource_forgets_its_canary_s_and_its_bake_s_readings() -> None:
    provider = Keyed()
    analyzer = Analyzer(FixedObjects(pods=PODS), pods=provider)
    assert (
        await analyzer.measure_bake(owner=OWNER, spec=baked(), version="2", now=NOW, wake=lambda: None)
        is None
    )
    assert analyzer.measuring(reading_key(OWNER.uid))
    analyzer.forget(OWNER.uid)
    assert not analyzer.measuring(reading_key(OWNER.uid))
    assert set(provider.forgotten) == {OWNER.uid, reading_key(OWNER.uid)}
    await analyzer.aclose()


async def test_the_pods_provider_measures_a_version_alone_without_production_pods() -> None:
    # No production pod to read is no error: only production pods that all fail to answer are.
    provider = PodMetricsProvider()
    target = AnalysisTarget(
        key=reading_key(OWNER.uid),
        namespace="ml",
        model="sentiment",
        production_version="",
        canary_version="2",
        interval_seconds=30,
        canary_pods=(),
        production_pods=(),
        read_at=NOW,
    )
    assert await provider.measure(target) is None  # the baseline
    windows = await provider.measure(target)
    assert windows is not None
    assert (windows.production.requests, windows.canary.requests) == (0, 0)
    await provider.aclose()
