"""A resource whose analysis endpoints misbehave delays only itself.

Twenty ModelDeployments measure their canaries from endpoints that drip a byte every half second and
never end: ten from their pods' /metrics, ten from a Prometheus of their own choosing. The real
Scheduler (its sixteen pass slots) runs the real Reconciler and Analyzer over them and over one more
resource that has no canary. Every pass returns at once, the other resource's pass is not held up,
each reading ends at its deadline and wakes its own resource, and the dripping connections are closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from builders import written_status
from hostile import Behaviour, Hostile, hostile
from lightkube import AsyncClient
from reconciler_fakes import Cluster, Events, Registry

from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.controller.analyzer import Analyzer
from aliasroll.controller.reconciler import PassResult, Reconciler
from aliasroll.controller.scheduler import DEFAULT_MAX_CONCURRENT, Scheduler
from aliasroll.planning import canary
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import ModelSnapshot, RegistryPoller, Wake
from aliasroll.spec import ResourceRef

HOSTILE = 20
SCRAPE_SECONDS = 3.0  # each pod scrape's deadline here (the operator's is 2 s)
PROMETHEUS_SECONDS = 3.0  # each query's (the operator's is 10 s)


class Canaries(Registry):
    """@production on version 1, @canary on version 2, for every model."""

    async def subscribe(self, **_: Any) -> ModelSnapshot:
        return ModelSnapshot(model="sentiment", aliases={"production": "1", "canary": "2"}, error=None)

    def unsubscribe(self, subscriber: Any) -> None:
        pass


class Statuses(Cluster):
    """The API server for many resources: statuses kept by name."""

    def __init__(self) -> None:
        super().__init__([])
        self.statuses: dict[str, dict[str, Any]] = {}

    async def patch(self, resource: Any, name: str, body: Any, **kwargs: Any) -> None:
        if (status := written_status(body)) is not None:
            self.statuses[name] = status
            return
        await super().patch(resource, name, body, **kwargs)


class Pods:
    """The watch's serving pods: two ready ones per resource (one per track), on 127.0.0.1."""

    async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        return []

    async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        return [
            {
                "metadata": {
                    "name": f"{owner.name}-{track}",
                    "uid": f"{owner.uid}-{track}",
                    "labels": {"aliasroll.io/track": track},
                },
                "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
            }
            for track in ("production", "canary")
        ]


def resource(name: str, *, analysis: Mapping[str, Any] | None, admin_port: int = 9090) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "sentiment", "alias": "production"},
        "registry": {"trackingUri": "http://mlflow:5000"},
        "replicas": 2,
        # The pods' /metrics is on their admin port.
        "serving": {"port": 8080, "adminPort": admin_port},
    }
    status: dict[str, Any] = {}
    if analysis is not None:
        spec["canary"] = {
            "alias": "canary",
            "steps": [{"weight": 20, "duration": "10m"}],
            "analysis": {"interval": "30s", "errorRate": {"maxPercent": 1}, **analysis},
        }
        # A run in its first step, never measured: a reading is due.
        status = {
            "production": {"alias": "production", "version": "1", "modelUri": "models:/sentiment/1"},
            "canary": {
                "version": "2",
                "model": "sentiment",
                "phase": "Analyzing",
                "stepIndex": 0,
                "step": "1/1",
                "stepStartedAt": canary.stamp(datetime.now(UTC) - timedelta(seconds=5)),
                "analysis": {"failures": 0, "failureLimit": 2},
            },
        }
    return {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"namespace": "ml", "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
        "status": status,
    }


async def test_twenty_dripping_analyses_do_not_delay_another_resource_s_pass() -> None:
    async with hostile(Behaviour("drip")) as pods, hostile(Behaviour("drip")) as prometheus:
        await run_them(pods, prometheus)


async def run_them(pods: Hostile, prometheus: Hostile) -> None:
    objects = Pods()
    analyzer = Analyzer(
        objects,
        pods=PodMetricsProvider(timeout_seconds=SCRAPE_SECONDS),
        prometheus_timeout_seconds=PROMETHEUS_SECONDS,
    )
    cluster = Statuses()
    statuses = cluster.statuses
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=objects,
        registry=cast(RegistryPoller, Canaries()),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
        analyzer=analyzer,
    )
    began = time.monotonic()
    passes: dict[str, list[tuple[float, float]]] = {}  # uid -> (began, ended) of each pass
    passed = asyncio.Condition()

    async def reconcile(body: Mapping[str, Any], wake: Wake) -> PassResult:
        uid = body["metadata"]["uid"]
        start = time.monotonic() - began
        try:
            return await reconciler.reconcile(body, wake=wake)
        finally:
            passes.setdefault(uid, []).append((start, time.monotonic() - began))
            async with passed:
                passed.notify_all()

    async def until(condition: Callable[[], bool], *, within: float) -> None:
        try:
            async with asyncio.timeout(within), passed:
                await passed.wait_for(condition)
        except TimeoutError:
            ended = {uid: len(times) for uid, times in passes.items()}
            pytest.fail(f"passes ended after {within:g} s: {ended} (a pass waits on its endpoints)")

    def uid(body: Mapping[str, Any]) -> str:
        return str(body["metadata"]["uid"])

    scheduler = Scheduler(
        reconcile=reconcile,
        forget=reconciler.forget,
        max_concurrent=DEFAULT_MAX_CONCURRENT,
        jitter=0,
        settle=0,
    )
    bodies = [
        resource(f"pods-{i}", analysis={}, admin_port=pods.port) if i % 2 else
        resource(f"prom-{i}", analysis={"prometheus": {"address": prometheus.url}})
        for i in range(HOSTILE)
    ]  # fmt: skip
    other = resource("other", analysis=None)
    try:
        for body in bodies:
            await scheduler.update(body)
        # Every hostile resource's pass has ended, and its reading drips beside it: two pods each
        # for ten of them, three queries each for the other ten. All sixteen slots are free.
        await until(lambda: all(uid(body) in passes for body in bodies), within=2)
        async with asyncio.timeout(5):
            await pods.opened(10 * 2)
            await prometheus.opened(10 * 3)
        assert scheduler.running == 0
        for body in bodies:
            (started, ended), *_ = passes[uid(body)]
            assert ended - started < 0.5, f"{body['metadata']['name']}: a pass of {ended - started:.2f} s"
            assert analyzer.measuring(uid(body))
        asked = time.monotonic() - began
        await scheduler.update(other)
        await until(lambda: uid(other) in passes, within=5)
        waited = passes[uid(other)][0][1] - asked
        assert waited < 0.5, f"the other resource's pass ended {waited:.2f} s after it was due"
        assert (pods.open, prometheus.open) == (20, 30), "the readings were still dripping meanwhile"
        # Each reading ends at its deadline, closes its connections and wakes its own resource,
        # whose next pass takes the result.
        await until(lambda: all(len(passes[uid(body)]) >= 2 for body in bodies), within=SCRAPE_SECONDS + 5)
        for body in bodies:
            woken = passes[uid(body)][1][0]
            assert woken >= SCRAPE_SECONDS - 0.1, f"woken {woken:.2f} s in, before its reading could end"
            assert not analyzer.measuring(uid(body))
        async with asyncio.timeout(3):
            await pods.idle.wait()
            await prometheus.idle.wait()
        # A pass while its reading is under way does not come back every second for it.
        for body in bodies:
            assert len(passes[uid(body)]) <= 3, passes[uid(body)]
        # The pass the reading woke took its result: the step holds, nothing counted as failed,
        # and status says why in the operator's words.
        for body in bodies:
            run = canary.recorded_run(statuses[body["metadata"]["name"]])
            assert run is not None
            assert (run.phase, run.failures, run.read_at is not None) == (canary.Phase.ANALYZING, 0, True)
            assert run.message.startswith("the analysis could not read metrics (not counted as a failure)")
            assert f"did not answer within {SCRAPE_SECONDS:g} s" in run.message, run.message
            assert "REMOTE-WROTE-THIS" not in run.message
    finally:
        await scheduler.stop()
        await reconciler.aclose()
