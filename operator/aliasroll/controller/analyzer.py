"""The measuring step of a pass: when the planner says a canary's measurement is due, read the
serving pods (from the operator's watch of them), ask the metrics provider the resource names (its
pods' /metrics, or Prometheus) for both tracks' windows, and judge them.

A reading waits on endpoints a tenant chooses (its pods run its image; its Prometheus address is
any URL), so it never runs inside a pass: a pass holds one of the operator's few pass slots, which
every resource shares. The pass that finds a measurement due starts a reading of its own resource
in the background and goes on at once; when the reading ends (each call it makes has a total
deadline and a byte budget, and the whole reading READING_DEADLINE_SECONDS) it wakes the resource,
and the next pass takes the result. A resource has at most one reading under way, and a finished
one is handed to one pass only (a pass whose status could not be written keeps it: the reconciler's
`_unrecorded`). What a resource's endpoints do delays only that resource's measurements.

What the planner gets (AnalysisResult):
- a measurement (Passed, Failed or Inconclusive) with `window_start`: where its window begins, on
  the pass clock. From the pods, the `measured_at` of the pass whose reading the window counts from
  (an earlier one when a pod missed readings); from Prometheus, `measured_at` minus the interval.
  No request it counts is older. A canary Prometheus has no sample of is Inconclusive, never Passed.
  `measured_at` is the time of the pass that started the reading (every request counted came after
  the reading it counts from, and the next reading is due one interval after this one began).
- no measurement and no error: a baseline was taken (the first reading of the resource, after an
  operator restart, or after a version moved); it says nothing of the canary.
- an `error`: the metrics could not be read; never a failed measurement.

A result is judged when a pass takes it, by the limits then in force; one read for other versions or
from another source than the spec now names is dropped, and a reading under way for them is
cancelled. Prometheus clients are kept per address, shared by the resources that name it, and closed
when no resource's reading names it any more.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx2

from aliasroll.analysis import prometheus
from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.analysis.prometheus import PrometheusProvider
from aliasroll.analysis.provider import AnalysisTarget, MetricsProvider, PodEndpoint, TrackWindows
from aliasroll.egress import Destinations
from aliasroll.errors import AliasrollError, AnalysisUnavailable
from aliasroll.kube.observe import OwnedObjects
from aliasroll.labels import LABEL_GATED, LABEL_TRACK, LABEL_VERSION
from aliasroll.planning.bake import reading_key
from aliasroll.planning.canary import AnalysisResult, CanaryRun
from aliasroll.planning.workloads import ADMIN_PORT_NAME, CONTAINER_NAME, HTTP_PORT_NAME
from aliasroll.registry.poller import Wake
from aliasroll.spec import AnalysisSpec, ModelDeploymentSpec, PrometheusSource, ResourceRef, Track

log = logging.getLogger(__name__)

# A whole reading of one resource: every pod's scrape (a few at a time, each bounded) or the
# Prometheus queries. Past it the reading is an error (the metrics could not be read).
READING_DEADLINE_SECONDS = 60.0


def limits_of(analysis: AnalysisSpec) -> Limits:
    return Limits(
        min_canary_requests=analysis.min_requests,
        max_error_percent=analysis.max_error_percent,
        max_error_increase_points=analysis.max_error_increase_points,
        max_p99_seconds=analysis.max_p99_seconds,
        max_p99_ratio=analysis.max_p99_ratio,
    )


@dataclass(frozen=True)
class _Asked:
    """What a reading is of: a result read for anything else is not used."""

    key: str  # where it is kept: the resource's uid, or planning.bake.reading_key of it
    model: str
    production: str  # "": none (a bake measures its version alone)
    canary: str
    source: PrometheusSource | None  # None: the pods


@dataclass(frozen=True)
class _Read:
    """A finished reading, not judged yet."""

    asked: _Asked
    measured_at: datetime
    windows: TrackWindows | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Reading:
    asked: _Asked
    task: asyncio.Task[None]


class Analyzer:
    def __init__(
        self,
        objects: OwnedObjects,
        *,
        pods: MetricsProvider | None = None,
        prometheus_timeout_seconds: float = prometheus.DEFAULT_TIMEOUT_SECONDS,
        reading_deadline_seconds: float = READING_DEADLINE_SECONDS,
        destinations: Destinations | None = None,
    ) -> None:
        self._objects = objects
        # The operator's egress allow-list for tenant URLs (None: no check, for tests and tools).
        self._destinations = destinations
        self._pods = pods or PodMetricsProvider()
        self._prometheus_timeout = prometheus_timeout_seconds
        self._deadline = reading_deadline_seconds
        self._readings: dict[str, _Reading] = {}  # under way, by the resource's uid
        self._read: dict[str, _Read] = {}  # finished, not taken by a pass yet
        # Prometheus clients by address, and which address each resource's last reading named.
        self._clients: dict[str, httpx2.AsyncClient] = {}
        self._addresses: dict[str, str] = {}
        self._users: Counter[str] = Counter()
        self._closing: set[asyncio.Task[None]] = set()

    async def measure(
        self,
        *,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        run: CanaryRun,
        previous_status: Mapping[str, Any],
        now: datetime,
        wake: Wake,
    ) -> AnalysisResult | None:
        """Called by a pass that finds a measurement due; returns at once. The result of the
        resource's last finished reading, if it was read of what the spec and status now name (taken:
        no other pass gets it); else None, and a reading is started unless one is under way. `wake` is
        called when the reading ends."""
        assert spec.canary is not None, "measured only with a canary"
        analysis = spec.canary.analysis
        assert analysis is not None, "measured only with an analysis"
        production = str((previous_status.get(Track.PRODUCTION.value) or {}).get("version") or "")
        asked = _Asked(owner.uid, spec.model.name, production, run.version, analysis.prometheus)
        return self._taken_or_started(owner, spec.serving.admin_port, analysis, asked, now, wake)

    async def measure_bake(
        self, *, owner: ResourceRef, spec: ModelDeploymentSpec, version: str, now: datetime, wake: Wake
    ) -> AnalysisResult | None:
        """As `measure`, for a bake: its version alone (no production: the warm version takes no
        requests), under a key of its own (a canary run's readings and a bake's never mix)."""
        bake = spec.rollback.bake if spec.rollback is not None else None
        assert bake is not None, "measured only with a bake"
        asked = _Asked(reading_key(owner.uid), spec.model.name, "", version, bake.analysis.prometheus)
        return self._taken_or_started(owner, spec.serving.admin_port, bake.analysis, asked, now, wake)

    def _taken_or_started(
        self,
        owner: ResourceRef,
        port: int,
        analysis: AnalysisSpec,
        asked: _Asked,
        now: datetime,
        wake: Wake,
    ) -> AnalysisResult | None:
        """The finished reading of `asked` (taken); else None, and one started unless under way."""
        key = asked.key
        read = self._read.pop(key, None)
        if read is not None and read.asked == asked and now <= self._kept_until(read, analysis):
            return _judged(read, analysis, version=asked.canary)
        reading = self._readings.get(key)
        if reading is not None:
            if reading.asked == asked:
                return None  # under way: it wakes the resource when it ends
            reading.task.cancel()  # of versions or a source the spec no longer names
        task = asyncio.create_task(
            self._reading(owner, port, analysis, asked, now, wake),
            name=f"analysis {key} {owner.namespace}/{owner.name}",
        )
        self._readings[key] = _Reading(asked=asked, task=task)
        return None

    def _kept_until(self, read: _Read, analysis: AnalysisSpec) -> datetime:
        """A finished reading no pass took for this long (the run paused, or ended and began again)
        says nothing of the run now: dropped, and a new one taken."""
        return read.measured_at + timedelta(seconds=self._deadline + analysis.interval_seconds)

    def measuring(self, key: str) -> bool:
        """A reading under `key` (a resource's uid, or its bake's reading_key) is under way (it wakes
        the resource when it ends)."""
        return key in self._readings

    def forget(self, uid: str) -> None:
        for key in (uid, reading_key(uid)):
            reading = self._readings.pop(key, None)
            if reading is not None:
                reading.task.cancel()
            self._read.pop(key, None)
            self._use(key, None)
            self._pods.forget(key)

    async def aclose(self) -> None:
        readings = [reading.task for reading in self._readings.values()]
        self._readings.clear()
        for task in readings:
            task.cancel()
        await asyncio.gather(*readings, return_exceptions=True)
        await self._pods.aclose()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _reading(
        self,
        owner: ResourceRef,
        port: int,
        analysis: AnalysisSpec,
        asked: _Asked,
        now: datetime,
        wake: Wake,
    ) -> None:
        read = _Read(asked=asked, measured_at=now)
        try:
            async with asyncio.timeout(self._deadline):
                read = replace(read, windows=await self._windows(owner, port, analysis, asked, now))
        except TimeoutError:
            read = replace(read, error=f"the reading did not end within {self._deadline:g} s")
        except AliasrollError as error:
            read = replace(read, error=error.message)
        except ValueError as error:  # a Prometheus address or label the provider refuses
            read = replace(read, error=str(error))
        except Exception:  # never lost quietly: the resource is told, the log has the rest
            log.exception("%s/%s: canary analysis failed", owner.namespace, owner.name)
            read = replace(read, error="the reading failed (the operator's log says why)")
        if read.error is not None:
            log.warning("%s/%s: canary analysis: %s", owner.namespace, owner.name, read.error)
        current = self._readings.get(asked.key)
        if current is None or current.task is not asyncio.current_task():
            return  # forgotten, or replaced by a reading of something else
        del self._readings[asked.key]
        self._read[asked.key] = read
        wake()

    async def _windows(
        self, owner: ResourceRef, port: int, analysis: AnalysisSpec, asked: _Asked, now: datetime
    ) -> TrackWindows | None:
        pods, unmeasured = await self._ready_pods(owner, port, asked)
        target = AnalysisTarget(
            key=asked.key,
            namespace=owner.namespace,
            model=asked.model,
            production_version=asked.production,
            canary_version=asked.canary,
            interval_seconds=max(1, round(analysis.interval_seconds)),
            production_pods=pods.get(Track.PRODUCTION, ()),
            canary_pods=pods.get(Track.CANARY, ()),
            unmeasured_pods=unmeasured,
            read_at=now,
        )
        return await self._provider(asked.key, asked.source).measure(target)

    def _provider(self, uid: str, source: PrometheusSource | None) -> MetricsProvider:
        if source is None:
            self._use(uid, None)
            return self._pods
        prometheus.check_source(
            source.address, matchers=source.labels, namespace_label=source.namespace_label
        )
        self._use(uid, source.address)
        client = self._clients.get(source.address)
        if client is None:
            client = self._clients[source.address] = prometheus.new_client(
                timeout_seconds=self._prometheus_timeout, destinations=self._destinations
            )
        return PrometheusProvider(
            source.address,
            matchers=source.labels,
            namespace_label=source.namespace_label,
            timeout_seconds=self._prometheus_timeout,
            client=client,
        )

    def _use(self, uid: str, address: str | None) -> None:
        """The resource's readings now name `address` (None: no Prometheus): a client no resource
        names any more is closed."""
        before = self._addresses.pop(uid, None)
        if address is not None:
            self._addresses[uid] = address
            self._users[address] += 1
        if before is None:
            return
        self._users[before] -= 1
        if self._users[before] > 0:
            return
        del self._users[before]
        client = self._clients.pop(before, None)
        if client is None:
            return
        try:
            closing = asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:  # no loop (a test's forget): nothing is connected without one
            return
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _ready_pods(
        self, owner: ResourceRef, port: int, asked: _Asked
    ) -> tuple[dict[Track, tuple[PodEndpoint, ...]], frozenset[str]]:
        """The ready serving pods of each track, by IP (the operator reaches them as Prometheus does)
        and admin port (`metrics_port`), from the operator's watch of serving pods, each with its uid
        and serving container's identity; and the uids of the serving pods that are not measured now
        (not Ready, no IP yet)."""
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
            labels = meta.get("labels") or {}
            if LABEL_GATED in labels:  # version mode: a pod's track is its version's role now
                by_version = {asked.production: Track.PRODUCTION, asked.canary: Track.CANARY}
                if (found_track := by_version.get(str(labels.get(LABEL_VERSION)))) is None:
                    continue
                track = found_track
            else:
                try:
                    track = Track(labels.get(LABEL_TRACK, ""))
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
                    port=metrics_port(pod, default=port),
                    uid=uid,
                    container=container_identity(status),
                )
            )
        return {track: tuple(pods) for track, pods in found.items()}, frozenset(unmeasured)


def _judged(read: _Read, analysis: AnalysisSpec, *, version: str) -> AnalysisResult:
    """A finished reading as the planner takes it, judged by the limits in force now."""
    if read.error is not None:
        return AnalysisResult(version=version, measured_at=read.measured_at, error=read.error)
    windows = read.windows
    if windows is None:
        return AnalysisResult(version=version, measured_at=read.measured_at)
    measurement = judge(limits_of(analysis), canary=windows.canary, production=windows.production)
    if windows.caveat is not None:
        measurement = replace(measurement, message=f"{measurement.message}; {windows.caveat}")
    since = windows.since
    if since is None:
        since = read.measured_at - timedelta(seconds=windows.seconds)
    return AnalysisResult(
        version=version, measured_at=read.measured_at, measurement=measurement, window_start=since
    )


def metrics_port(pod: Mapping[str, Any], *, default: int) -> int:
    """Where a serving pod answers /metrics: its serving container's port named admin. A pod made
    before the serving image had an admin port (an operator upgrade rolls it soon) declares none and
    answers on its port named http; a pod that declares neither, on `default`
    (spec.serving.adminPort)."""
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") != CONTAINER_NAME:
            continue
        ports = {port.get("name"): port.get("containerPort") for port in container.get("ports") or ()}
        for name in (ADMIN_PORT_NAME, HTTP_PORT_NAME):
            if type(ports.get(name)) is int:
                return int(ports[name])
    return default


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
