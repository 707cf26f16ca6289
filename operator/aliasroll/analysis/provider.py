"""What a metrics provider is asked and what it answers, shared by every provider.

The reconciler fills an `AnalysisTarget` from the resource and the pods it lists; a provider answers
the canary's and production's windows over the last analysis interval, or None while it has no
measurement yet. A metrics source that cannot be read raises AnalysisUnavailable (aliasroll.errors):
an unreachable source is never a failed measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aliasroll.analysis.window import Window


@dataclass(frozen=True)
class PodEndpoint:
    name: str
    ip: str
    port: int  # the serving container's port named "http": it serves /metrics too


@dataclass(frozen=True)
class AnalysisTarget:
    key: str  # the ModelDeployment's uid: what a provider keeps per resource
    namespace: str
    model: str
    production_version: str
    canary_version: str
    interval_seconds: int
    production_pods: tuple[PodEndpoint, ...] = ()
    canary_pods: tuple[PodEndpoint, ...] = ()


@dataclass(frozen=True)
class TrackWindows:
    canary: Window
    production: Window
    seconds: float  # how long the windows are
    # Pods whose /metrics did not answer and were left out of this measurement.
    unreachable_pods: tuple[str, ...] = ()


class MetricsProvider(Protocol):
    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        """The windows since the last measurement (or over the last interval); None: none yet."""
        ...

    def forget(self, key: str) -> None:
        """Drops what is kept for a resource (its canary ended, or the resource is gone)."""
        ...

    async def aclose(self) -> None: ...
