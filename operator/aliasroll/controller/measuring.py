"""The measuring step of a pass: when the planner says a canary's measurement is due, read the
serving pods (from the operator's watch of them), ask the metrics provider the resource names (its
pods' /metrics, or Prometheus) for both tracks' windows, and judge them. Every failure to read
metrics becomes a result with an `error`, never a failed measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.analysis.prometheus import PrometheusProvider
from aliasroll.analysis.provider import AnalysisTarget, MetricsProvider, PodEndpoint
from aliasroll.errors import AliasrollError, AnalysisUnavailable
from aliasroll.kube.observe import OwnedObjects
from aliasroll.planning.canary import AnalysisResult, CanaryRun
from aliasroll.planning.workloads import LABEL_TRACK
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
        self._prometheus: dict[tuple[str, tuple[tuple[str, str], ...]], PrometheusProvider] = {}

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
            pods = await self._ready_pods(owner, spec.serving.port)
            target = AnalysisTarget(
                key=owner.uid,
                namespace=owner.namespace,
                model=spec.model.name,
                production_version=production,
                canary_version=run.version,
                interval_seconds=max(1, round(analysis.interval_seconds)),
                production_pods=pods.get(Track.PRODUCTION, ()),
                canary_pods=pods.get(Track.CANARY, ()),
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
        return AnalysisResult(
            version=run.version,
            measured_at=now,
            measurement=measurement,
            window_start=now - timedelta(seconds=windows.seconds),
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
        key = (source.address, tuple(sorted(source.labels.items())))
        provider = self._prometheus.get(key)
        if provider is None:
            provider = self._prometheus[key] = PrometheusProvider(source.address, matchers=source.labels)
        return provider

    async def _ready_pods(self, owner: ResourceRef, port: int) -> dict[Track, tuple[PodEndpoint, ...]]:
        """The ready serving pods of each track, by IP (the operator reaches them as Prometheus does),
        from the operator's watch of serving pods."""
        found: dict[Track, list[PodEndpoint]] = {Track.PRODUCTION: [], Track.CANARY: []}
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
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ()
            )
            if status.get("podIP") and ready:
                found[track].append(PodEndpoint(name=str(meta.get("name")), ip=status["podIP"], port=port))
        return {track: tuple(pods) for track, pods in found.items()}
