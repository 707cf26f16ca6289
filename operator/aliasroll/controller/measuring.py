"""The measuring step of a pass: when the planner says a canary's measurement is due, read the
serving pods (from the operator's watch of them), ask the metrics provider the resource names (its
pods' /metrics, or Prometheus) for both tracks' windows, and judge them.

What the planner gets (AnalysisResult):
- a measurement (Passed, Failed or Inconclusive) with `window_start`: where its window begins, on
  the pass clock. From the pods, the `measured_at` of the pass whose reading the window counts from
  (an earlier one when a pod missed readings); from Prometheus, `measured_at` minus the interval.
  No request it counts is older. A canary Prometheus has no sample of is Inconclusive, never Passed.
- no measurement and no error: a baseline was taken (the first reading of the resource, after an
  operator restart, or after a version moved); it says nothing of the canary.
- an `error`: the metrics could not be read; never a failed measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.analysis.prometheus import PrometheusProvider
from aliasroll.analysis.provider import AnalysisTarget, MetricsProvider, PodEndpoint
from aliasroll.errors import AliasrollError, AnalysisUnavailable
from aliasroll.kube.observe import OwnedObjects
from aliasroll.planning.canary import AnalysisResult, CanaryRun
from aliasroll.planning.workloads import CONTAINER_NAME, LABEL_TRACK
from aliasroll.spec import AnalysisSpec, ModelDeploymentSpec, PrometheusSource, ResourceRef, Track

log = logging.getLogger(__name__)


def limits_of(analysis: AnalysisSpec) -> Limits:
    return Limits(
        min_canary_requests=analysis.min_requests,
        max_error_percent=analysis.max_error_percent,
        max_error_increase_points=analysis.max_error_increase_points,
        max_p99_seconds=analysis.max_p99_seconds,
        max_p99_ratio=analysis.max_p99_ratio,
    )


class Analyzer:
    def __init__(self, objects: OwnedObjects, *, pods: MetricsProvider | None = None) -> None:
        self._objects = objects
        self._pods = pods or PodMetricsProvider()
        self._prometheus: dict[tuple[str, tuple[tuple[str, str], ...], str], PrometheusProvider] = {}

    async def measure(
        self,
        *,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        run: CanaryRun,
        previous_status: Mapping[str, Any],
        now: datetime,
    ) -> AnalysisResult:
        assert spec.canary is not None, "measured only with a canary"
        analysis = spec.canary.analysis
        assert analysis is not None, "measured only with an analysis"
        production = str((previous_status.get(Track.PRODUCTION.value) or {}).get("version") or "")
        try:
            pods, unmeasured = await self._ready_pods(owner, spec.serving.port)
            target = AnalysisTarget(
                key=owner.uid,
                namespace=owner.namespace,
                model=spec.model.name,
                production_version=production,
                canary_version=run.version,
                interval_seconds=max(1, round(analysis.interval_seconds)),
                production_pods=pods.get(Track.PRODUCTION, ()),
                canary_pods=pods.get(Track.CANARY, ()),
                unmeasured_pods=unmeasured,
                read_at=now,
            )
            windows = await self._provider(analysis.prometheus).measure(target)
        except AliasrollError as error:
            log.warning("%s/%s: canary analysis: %s", owner.namespace, owner.name, error)
            return AnalysisResult(version=run.version, measured_at=now, error=error.message)
        except ValueError as error:  # a Prometheus address or label the provider refuses
            return AnalysisResult(version=run.version, measured_at=now, error=str(error))
        if windows is None:
            return AnalysisResult(version=run.version, measured_at=now)
        measurement = judge(limits_of(analysis), canary=windows.canary, production=windows.production)
        if windows.caveat is not None:
            measurement = replace(measurement, message=f"{measurement.message}; {windows.caveat}")
        since = windows.since if windows.since is not None else now - timedelta(seconds=windows.seconds)
        return AnalysisResult(
            version=run.version,
            measured_at=now,
            measurement=measurement,
            window_start=since,
        )

    def forget(self, uid: str) -> None:
        self._pods.forget(uid)
        for provider in self._prometheus.values():
            provider.forget(uid)

    async def aclose(self) -> None:
        await self._pods.aclose()
        for provider in self._prometheus.values():
            await provider.aclose()

    def _provider(self, source: PrometheusSource | None) -> MetricsProvider:
        if source is None:
            return self._pods
        key = (source.address, tuple(sorted(source.labels.items())), source.namespace_label)
        provider = self._prometheus.get(key)
        if provider is None:
            provider = self._prometheus[key] = PrometheusProvider(
                source.address, matchers=source.labels, namespace_label=source.namespace_label
            )
        return provider

    async def _ready_pods(
        self, owner: ResourceRef, port: int
    ) -> tuple[dict[Track, tuple[PodEndpoint, ...]], frozenset[str]]:
        """The ready serving pods of each track, by IP (the operator reaches them as Prometheus does),
        from the operator's watch of serving pods, each with its uid and serving container's identity;
        and the uids of the serving pods that are not measured now (not Ready, no IP yet)."""
        found: dict[Track, list[PodEndpoint]] = {Track.PRODUCTION: [], Track.CANARY: []}
        unmeasured: set[str] = set()
        try:
            pods = await self._objects.pods(owner)
        except AliasrollError as error:
            raise AnalysisUnavailable(
                f"could not read the serving pods to measure them: {error.message} "
                "(the operator needs list and watch on pods)"
            ) from None
        for pod in pods:
            meta = pod.get("metadata") or {}
            try:
                track = Track((meta.get("labels") or {}).get(LABEL_TRACK, ""))
            except ValueError:
                continue
            status = pod.get("status") or {}
            uid = str(meta.get("uid") or "")
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
            )
            if not (status.get("podIP") and ready):
                if uid:
                    unmeasured.add(uid)
                continue
            found[track].append(
                PodEndpoint(
                    name=str(meta.get("name")),
                    ip=status["podIP"],
                    port=port,
                    uid=uid,
                    container=container_identity(status),
                )
            )
        return {track: tuple(pods) for track, pods in found.items()}, frozenset(unmeasured)


def container_identity(status: Mapping[str, Any]) -> str:
    """Which run of the serving container answers: its restart count and container ID, from the
    pod's status ("" when the status does not say). A container that restarted has another one."""
    for container in status.get("containerStatuses") or ():
        if container.get("name") == CONTAINER_NAME:
            restarts = container.get("restartCount")
            container_id = container.get("containerID") or ""
            if restarts is None and not container_id:
                return ""
            return f"{restarts if restarts is not None else ''}/{container_id}"
    return ""
