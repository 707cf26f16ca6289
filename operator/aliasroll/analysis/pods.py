"""Measuring from the serving pods' own /metrics: no Prometheus needed.

Each measurement scrapes every measured pod of both tracks (by pod IP, a few at a time) and returns
the window between this reading and what was last read of each container, kept in memory per
resource. A pod runs the image its resource names, so its /metrics is bounded like any endpoint a
tenant chooses (analysis.fetch): each scrape has a total deadline (DEFAULT_TIMEOUT_SECONDS) and a
byte budget (MAX_BODY_BYTES) counted as the body streams in, and only the lines of the serving
series are kept (MAX_SERIES_BYTES). At most MAX_SCRAPES_PER_MEASUREMENT scrapes of one measurement
are under way at once, and nothing is shared between resources but the HTTP client (its pool has
no connection limit, so one resource's silent pods never make another's scrapes wait). A pod that
misbehaves is named with a fixed phrase, never with what it answered.

Every container's requests are counted exactly once:

- A baseline is kept per pod (by uid) with the identity of the container it was read from (restart
  count and container ID). A pod left out of a reading (not Ready for a moment, or its /metrics did
  not answer) keeps its baseline: when it is measured again, its window starts where it was last
  read, and the window's start (`since`) reaches back to that reading.
- Only a container read for the first time counts from zero: a pod not read before (it started
  since, or served nothing before: a pod that is not Ready takes no traffic), or a pod whose
  container changed (its restart count or container ID is not the one read before), whatever its
  counters say. A counter that went down also means a restart, for pods whose identity is unknown
  and for a watch that has not seen the restart yet.
- A pod that exists keeps its baseline for as long as it exists (the target names the pods it does
  not measure); one gone from every reading for `FORGET_AFTER_INTERVALS` intervals is forgotten.

The first measurement of a resource, or the first after either version changed, only takes the
baseline and answers None: not a measurement. An operator restart loses the baselines: the next
measurement starts again from a baseline, which costs one interval and never mixes two versions'
counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import httpx2

from aliasroll.analysis.fetch import CallFailed, call
from aliasroll.analysis.provider import AnalysisTarget, PodEndpoint, TrackWindows
from aliasroll.analysis.window import (
    Counters,
    MetricsFormatError,
    SeriesLines,
    Window,
    counted_since,
    parse_counters,
    sum_counters,
    was_reset,
)
from aliasroll.errors import AnalysisUnavailable

METRICS_PATH = "/metrics"
# A whole scrape (connect, head, body): a serving pod answers its /metrics in milliseconds.
DEFAULT_TIMEOUT_SECONDS = 2.0
# Scrapes of one measurement (one resource) under way at once.
MAX_SCRAPES_PER_MEASUREMENT = 8
# /metrics of one serving pod is a few kB; a pod answering far more is not a serving pod.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Of that, the serving series' sample lines kept to be parsed (a pod's are about 2 kB per version),
# and the longest line read.
MAX_SERIES_BYTES = 256 * 1024
MAX_LINE_BYTES = 64 * 1024
# A pod neither measured nor named as existing for this many analysis intervals is gone (deleted):
# its baseline is dropped. The pods the watch lists are named every reading, so this only bounds
# what deleted pods leave behind (and covers callers that do not name unmeasured pods).
FORGET_AFTER_INTERVALS = 10


@dataclass(frozen=True)
class _Stamp:
    """When a reading was taken: on the provider's clock, and on the caller's (AnalysisTarget.read_at)."""

    at: float
    read_at: datetime | None


@dataclass(frozen=True)
class _Baseline:
    """What was last read of one pod: its next window counts from here."""

    container: str  # the identity of the container read ("" unknown)
    # The counters come from a container newer than `container`: the watch had not seen its restart
    # yet. A later identity other than `container` is that newer container, already read.
    newer: bool
    counters: Counters
    read: _Stamp  # the reading the counters come from
    listed_at: float  # the last reading that measured the pod or named it as existing


@dataclass(frozen=True)
class _Reading:
    read: _Stamp
    versions: tuple[str, str]  # (production, canary)
    production: Mapping[str, _Baseline]
    canary: Mapping[str, _Baseline]


@dataclass(frozen=True)
class _Scrape:
    pod: PodEndpoint
    counters: Counters | None = None  # None with no problem: the pod serves another version
    problem: str | None = None  # why the pod could not be read
    read: int = 0  # bytes of its body read


@dataclass(frozen=True)
class _Track:
    window: Window
    baselines: dict[str, _Baseline]
    counted_from: tuple[_Stamp, ...]  # the readings the window counts from, pod by pod


class PodMetricsProvider:
    def __init__(
        self,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        client: httpx2.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout = timeout_seconds
        # trust_env off: a proxy set for the registry must not sit between the operator and pod IPs.
        # No connection limit (each measurement limits its own scrapes) and no kept-alive
        # connections: the pool is no resource one resource's pods could hold from another's.
        self._client = client or httpx2.AsyncClient(
            timeout=timeout_seconds,
            trust_env=False,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self._clock = clock
        self._readings: dict[str, _Reading] = {}

    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        versions = (target.production_version, target.canary_version)
        # Taken before the scrapes: every request counted from this reading came after it.
        stamp = _Stamp(at=self._clock(), read_at=target.read_at)
        slots = asyncio.Semaphore(MAX_SCRAPES_PER_MEASUREMENT)  # this measurement's own
        production, canary = await asyncio.gather(
            self._scrape_all(
                target.production_pods, model=target.model, version=target.production_version, slots=slots
            ),
            self._scrape_all(
                target.canary_pods, model=target.model, version=target.canary_version, slots=slots
            ),
        )
        _require_an_answer("production", production)
        _require_an_answer("canary", canary)
        previous = self._readings.get(target.key)
        if previous is not None and previous.versions != versions:
            previous = None  # a version moved: counters of the old one say nothing of the new one

        def advance(scrapes: Sequence[_Scrape], kept: Mapping[str, _Baseline]) -> _Track:
            return _advance(
                scrapes,
                kept,
                unmeasured=target.unmeasured_pods,
                stamp=stamp,
                keep_seconds=FORGET_AFTER_INTERVALS * max(target.interval_seconds, 1),
            )

        production_track = advance(production, previous.production if previous else {})
        canary_track = advance(canary, previous.canary if previous else {})
        self._readings[target.key] = _Reading(
            read=stamp,
            versions=versions,
            production=production_track.baselines,
            canary=canary_track.baselines,
        )
        if previous is None:
            return None
        start = min(
            (previous.read, *production_track.counted_from, *canary_track.counted_from),
            key=lambda read: read.at,
        )
        return TrackWindows(
            production=production_track.window,
            canary=canary_track.window,
            seconds=stamp.at - start.at,
            since=start.read_at,
            unreachable_pods=tuple(s.pod.name for s in (*production, *canary) if s.problem is not None),
        )

    def forget(self, key: str) -> None:
        self._readings.pop(key, None)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _scrape_all(
        self, pods: Sequence[PodEndpoint], *, model: str, version: str, slots: asyncio.Semaphore
    ) -> list[_Scrape]:
        scrapes = (self._scrape(pod, model=model, version=version, slots=slots) for pod in pods)
        return list(await asyncio.gather(*scrapes))

    async def _scrape(
        self, pod: PodEndpoint, *, model: str, version: str, slots: asyncio.Semaphore | None = None
    ) -> _Scrape:
        if not pod.ip:
            return _Scrape(pod, problem="no pod IP yet")
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        url = f"http://{host}:{pod.port}{METRICS_PATH}"
        lines = SeriesLines(limit=MAX_SERIES_BYTES, max_line=MAX_LINE_BYTES)
        try:
            async with slots or asyncio.Semaphore(1):
                answer = await call(
                    self._client,
                    "GET",
                    url,
                    deadline=self._timeout,
                    limit=MAX_BODY_BYTES,
                    read_body=lambda status: status == 200,
                    keep=lines.feed,
                )
            if answer.status != 200:
                return _Scrape(pod, problem=f"{url} answered HTTP {answer.status}")
            return _Scrape(
                pod, counters=parse_counters(lines.text(), model=model, version=version), read=answer.read
            )
        except CallFailed as failed:
            return _Scrape(pod, problem=f"{url} {failed}", read=failed.read)
        except MetricsFormatError as error:
            return _Scrape(pod, problem=f"{url}: {error}")


def _advance(
    scrapes: Sequence[_Scrape],
    kept: Mapping[str, _Baseline],
    *,
    unmeasured: frozenset[str],
    stamp: _Stamp,
    keep_seconds: float,
) -> _Track:
    """One track's window since what was last read of each of its containers, and the baselines
    kept for the next reading."""
    baselines: dict[str, _Baseline] = {}
    parts: list[Counters] = []
    counted_from: list[_Stamp] = []
    for scrape in scrapes:
        key = scrape.pod.key
        before = kept.get(key)
        if scrape.counters is None:
            # Unreachable, or serving another version: left out, its baseline kept.
            if before is not None:
                baselines[key] = replace(before, listed_at=stamp.at)
            continue
        container, newer = scrape.pod.container, False
        if before is None:
            parts.append(scrape.counters)  # a pod never read: all it answered is new
        else:
            # What it answered since it was last read (it may have missed readings since): from that
            # reading on, and all of it when the container is not the one read then.
            counted_from.append(before.read)
            restarted = bool(before.container and container and container != before.container)
            if restarted and not before.newer:
                parts.append(scrape.counters)
            else:
                # Same container, or identity unknown, or the newer container already read: a
                # counter that went down is a restart the watch has not shown (yet).
                parts.append(counted_since(before.counters, scrape.counters))
                newer = bool(container) and container == before.container
                newer = newer and (before.newer or was_reset(before.counters, scrape.counters))
        baselines[key] = _Baseline(
            container=container,
            newer=newer,
            counters=scrape.counters,
            read=stamp,
            listed_at=stamp.at,
        )
    for key, before in kept.items():
        if key in baselines:
            continue
        if key in unmeasured:
            baselines[key] = replace(before, listed_at=stamp.at)  # exists, not Ready: kept
        elif stamp.at - before.listed_at <= keep_seconds:
            baselines[key] = before  # not listed for a while: kept a little longer
    return _Track(window=sum_counters(parts), baselines=baselines, counted_from=tuple(counted_from))


def _require_an_answer(track: str, scrapes: Sequence[_Scrape]) -> None:
    problems = [s for s in scrapes if s.problem is not None]
    if scrapes and len(problems) == len(scrapes):
        shown = "; ".join(f"{s.pod.name} ({s.problem})" for s in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AnalysisUnavailable(
            f"none of the {len(scrapes)} {track} pods answered GET {METRICS_PATH}: {shown}{more}. "
            "The operator must reach the pods' IPs on their admin port, spec.serving.adminPort "
            "(check NetworkPolicies), or set the analysis to read a Prometheus"
        )
