"""What a metrics provider is asked and what it answers, shared by every provider.

The reconciler fills an `AnalysisTarget` from the resource and the pods it lists; a provider answers
the canary's and production's windows, or None, or raises:

- `TrackWindows`: a measurement. `since` says where its window begins (exactly: the `read_at` of the
  reading it counts from, for the pod reader; `read_at` minus the interval, for Prometheus, which
  evaluates its queries at `read_at`). No request it counts is older than that.
- None: a baseline, not a measurement. The pod reader's first reading of a resource (after the
  operator started, after `forget`, or after either version changed) only records where the counters
  stand; the planner must never treat it as a verdict nor as a measurement of the step.
- AnalysisUnavailable (aliasroll.errors): the metrics source could not be read (no pod answers,
  Prometheus unreachable, or it has no sample of production's series). Never a failed measurement.

A canary that nothing is known of is a measurement with no canary traffic, never a pass: Prometheus
answering no sample of the canary's series (its pods not scraped twice yet, or not scraped at all)
gives a canary window of 0 requests, which the judge calls Inconclusive, with `caveat` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aliasroll.analysis.window import Window


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    ip: str
    port: int  # the serving container's admin port (named "admin"), where it answers /metrics
    # Which container answers: the pod's uid and its serving container's identity (restart count and
    # container ID, from the watched pod's status). The pod reader keeps a baseline per uid and counts
    # a container it has not read before from zero. Empty: unknown (the name keys the pod, and a
    # restart is seen only when a counter goes down).
    uid: str = ""
    container: str = ""

    @property
    def key(self) -> str:
        return self.uid or self.name


@dataclass(frozen=True)
class AnalysisTarget:
    key: str  # the ModelDeployment's uid: what a provider keeps per resource
    namespace: str
    model: str
    production_version: str  # "": none (a bake measures its version alone; production's window is empty)
    canary_version: str
    interval_seconds: int
    production_pods: tuple[PodEndpoint, ...] = ()
    canary_pods: tuple[PodEndpoint, ...] = ()
    # Serving pods that exist but are not measured this time (not Ready, or no IP yet), by
    # PodEndpoint.key: what was last read of them is kept for when they are measured again.
    unmeasured_pods: frozenset[str] = frozenset()
    # When this reading is taken, on the caller's clock (the pass's time): windows say from which
    # reading they count by this time (TrackWindows.since). None: windows have no `since`.
    read_at: datetime | None = None


@dataclass(frozen=True)
class TrackWindows:
    canary: Window
    production: Window
    # How far back the window reaches, on the provider's clock: no request counted is older.
    seconds: float
    # Where the window begins, on the caller's clock: the `read_at` of the reading it counts from
    # (the earliest one, when a pod missed readings). None when the target had no `read_at`.
    since: datetime | None = None
    # Pods whose /metrics did not answer and were left out of this measurement.
    unreachable_pods: tuple[str, ...] = ()
    # What the judge's message should add about these windows (e.g. Prometheus has no sample of the
    # canary's series, so its window is empty); None: nothing.
    caveat: str | None = None


class MetricsProvider(Protocol):
    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        """The windows since the last reading (or over the last interval); None: a baseline only."""
        ...

    def forget(self, key: str) -> None:
        """Drops what is kept for a resource (its canary ended, or the resource is gone)."""
        ...

    async def aclose(self) -> None: ...
