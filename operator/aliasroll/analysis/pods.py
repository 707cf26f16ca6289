"""Measuring from the serving pods' own /metrics: no Prometheus needed.

Each measurement scrapes every pod of both tracks (by pod IP, concurrently, with a short timeout)
and returns the window between this reading and the previous one, kept in memory per resource. The
first measurement of a resource, or the first after either version changed, only takes the baseline
and answers None. An operator restart loses the baselines: the next measurement starts again from a
baseline, which costs one interval and never mixes two versions' counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx2

from aliasroll.analysis.provider import AnalysisTarget, PodEndpoint, TrackWindows
from aliasroll.analysis.window import Counters, MetricsFormatError, parse_counters, window_between
from aliasroll.errors import AnalysisUnavailable

METRICS_PATH = "/metrics"
DEFAULT_TIMEOUT_SECONDS = 2.0
MAX_CONCURRENT_SCRAPES = 32
# /metrics of one serving pod is a few kB; a pod answering far more is not a serving pod.
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Reading:
    at: float
    versions: tuple[str, str]  # (production, canary)
    production: Mapping[str, Counters]
    canary: Mapping[str, Counters]


@dataclass(frozen=True)
class _Scrape:
    pod: PodEndpoint
    counters: Counters | None = None  # None with no problem: the pod serves another version
    problem: str | None = None  # why the pod could not be read


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
        self._client = client or httpx2.AsyncClient(timeout=timeout_seconds, trust_env=False)
        self._clock = clock
        self._readings: dict[str, _Reading] = {}
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_SCRAPES)

    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        versions = (target.production_version, target.canary_version)
        production, canary = await asyncio.gather(
            self._scrape_all(target.production_pods, model=target.model, version=target.production_version),
            self._scrape_all(target.canary_pods, model=target.model, version=target.canary_version),
        )
        _require_an_answer("production", production)
        _require_an_answer("canary", canary)
        now = self._clock()
        previous = self._readings.get(target.key)
        if previous is not None and previous.versions != versions:
            previous = None  # a version moved: counters of the old one say nothing of the new one
        reading = _Reading(
            at=now,
            versions=versions,
            production=_carry(production, previous.production if previous else {}),
            canary=_carry(canary, previous.canary if previous else {}),
        )
        self._readings[target.key] = reading
        if previous is None:
            return None
        return TrackWindows(
            production=window_between(previous.production, _answered(production)),
            canary=window_between(previous.canary, _answered(canary)),
            seconds=now - previous.at,
            unreachable_pods=tuple(s.pod.name for s in (*production, *canary) if s.problem is not None),
        )

    def forget(self, key: str) -> None:
        self._readings.pop(key, None)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _scrape_all(self, pods: Sequence[PodEndpoint], *, model: str, version: str) -> list[_Scrape]:
        return list(await asyncio.gather(*(self._scrape(pod, model=model, version=version) for pod in pods)))

    async def _scrape(self, pod: PodEndpoint, *, model: str, version: str) -> _Scrape:
        if not pod.ip:
            return _Scrape(pod, problem="no pod IP yet")
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        url = f"http://{host}:{pod.port}{METRICS_PATH}"
        try:
            async with self._limit:
                answer = await self._client.get(url, timeout=self._timeout)
        except httpx2.TimeoutException:
            return _Scrape(pod, problem=f"{url} timed out after {self._timeout:g} s")
        except httpx2.HTTPError as error:
            return _Scrape(pod, problem=f"{url}: {str(error) or type(error).__name__}")
        if answer.status_code != 200:
            return _Scrape(pod, problem=f"{url} answered HTTP {answer.status_code}")
        if len(answer.content) > MAX_BODY_BYTES:
            return _Scrape(pod, problem=f"{url} answered {len(answer.content)} bytes: not a serving pod")
        try:
            return _Scrape(pod, counters=parse_counters(answer.text, model=model, version=version))
        except MetricsFormatError as error:
            return _Scrape(pod, problem=f"{url}: {error}")


def _answered(scrapes: Sequence[_Scrape]) -> dict[str, Counters]:
    return {s.pod.name: s.counters for s in scrapes if s.counters is not None}


def _carry(scrapes: Sequence[_Scrape], previous: Mapping[str, Counters]) -> dict[str, Counters]:
    """This reading, plus the previous counters of pods that did not answer this time: when such a
    pod answers again, its window starts where it was last read, not from the pod's start."""
    kept = _answered(scrapes)
    for scrape in scrapes:
        if scrape.problem is not None and scrape.pod.name in previous:
            kept[scrape.pod.name] = previous[scrape.pod.name]
    return kept


def _require_an_answer(track: str, scrapes: Sequence[_Scrape]) -> None:
    problems = [s for s in scrapes if s.problem is not None]
    if scrapes and len(problems) == len(scrapes):
        shown = "; ".join(f"{s.pod.name} ({s.problem})" for s in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AnalysisUnavailable(
            f"none of the {len(scrapes)} {track} pods answered GET {METRICS_PATH}: {shown}{more}. "
            "The operator must reach the pods' IPs on the serving port (check NetworkPolicies), "
            "or set the analysis to read a Prometheus"
        )
