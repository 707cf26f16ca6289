"""The shape of a ModelDeployment's status, typed so mypy checks every key the planner writes.

These mirror the CRD's status schema (crds/modeldeployments.aliasroll.io.yaml); a unit test
(tests/unit/planning/test_status_types.py) fails when a key is in one and not the other. They type
what the planner builds; a previous status read back from the API server stays a plain Mapping (it
may come from an older operator, or be edited by hand) and is read defensively.
"""

from __future__ import annotations

from typing import TypedDict

from aliasroll.conditions import ConditionStatus

__all__ = [
    "BakeStatus",
    "CanaryAnalysisStatus",
    "CanaryTrackStatus",
    "ConditionStatus",
    "FastSwitchStatus",
    "HistorySpan",
    "LastCanaryAnalysis",
    "LastCanaryStatus",
    "MetricStatus",
    "ModelDeploymentStatus",
    "RegistryStatus",
    "TrackStatus",
    "TrafficStatus",
    "VersionRef",
    "WarmVersionStatus",
]


class MetricStatus(TypedDict, total=False):
    """One metric of a canary measurement (analysis.judge.MetricResult.to_status)."""

    metric: str
    verdict: str
    canary: float
    production: float
    bound: float
    boundKind: str
    relativeSkipped: bool


class CanaryAnalysisStatus(TypedDict, total=False):
    """status.canary.analysis: the run's measurements so far."""

    verdict: str
    measuredAt: str
    windowStart: str
    readAt: str
    failures: int
    failureLimit: int
    metrics: list[MetricStatus]


class LastCanaryAnalysis(TypedDict, total=False):
    """status.lastCanary.analysis: what an ended run's analysis said last."""

    verdict: str
    failures: int
    metrics: list[MetricStatus]


class TrackStatus(TypedDict, total=False):
    """status.production: the version a track serves, since when, and its pods."""

    alias: str
    version: str
    modelUri: str
    runId: str
    since: str
    replicas: int
    availableReplicas: int


class GateStatus(TypedDict, total=False):
    """status.canary.gate (and lastCanary.gate): the holdout gate of the run (planning/gate.py)."""

    job: str
    digest: str
    baseline: str
    verdict: str
    reason: str
    summary: str
    runId: str
    cleared: bool


class CanaryTrackStatus(TrackStatus, total=False):
    """status.canary: the canary track, with its run (planning/canary.py `to_status`)."""

    model: str
    phase: str
    stepIndex: int
    step: str
    stepStartedAt: str
    waitingSince: str
    weight: int
    message: str
    endedAt: str
    promotingFrom: str
    aliasWrite: str
    analysis: CanaryAnalysisStatus
    gate: GateStatus


class LastCanaryStatus(TypedDict, total=False):
    """status.lastCanary: how the last canary run ended (planning/canary.py `to_record`)."""

    model: str
    version: str
    phase: str
    step: str
    message: str
    endedAt: str
    aliasWrite: str
    analysis: LastCanaryAnalysis
    gate: GateStatus


class TrafficStatus(TypedDict):
    """status.traffic: the split asked for and the one in place."""

    router: str
    requestedCanaryWeight: int
    canaryWeight: int
    message: str


class RegistryStatus(TypedDict, total=False):
    """status.registry: where the registry is and what its aliases said last."""

    trackingUri: str
    aliases: dict[str, str]


# "from" is a Python keyword, so the span is declared in the functional form.
HistorySpan = TypedDict(
    "HistorySpan",
    {
        "track": str,
        "model": str,
        "version": str,
        "from": str,
        "to": str,
        "reason": str,
        "outcome": str,
    },
    total=False,
)
HistorySpan.__doc__ = "One entry of status.history: a version a track served, from when to when."


class WarmVersionStatus(TypedDict, total=False):
    """One entry of status.warm: a version that left @production and still runs (spec.rollback)."""

    model: str
    version: str
    since: str  # when it left @production
    until: str  # when it goes (since + spec.rollback.window); absent while it still takes requests
    replicas: int
    routed: bool  # still taking requests while the versions the aliases name come up


class VersionRef(TypedDict):
    """A model version: status.fastSwitch.from and .to."""

    model: str
    version: str


# "from" is a Python keyword, so the switch is declared in the functional form.
FastSwitchStatus = TypedDict(
    "FastSwitchStatus", {"kind": str, "since": str, "from": VersionRef, "to": VersionRef}
)
FastSwitchStatus.__doc__ = (
    "status.fastSwitch: a fast rollback or promotion under way (kind rollback or promotion)."
)


class BakeStatus(TypedDict, total=False):
    """status.bake: the bake of the new production after a move forward (planning/bake.py), or how
    the last one ended (kept until the next one starts)."""

    model: str
    version: str  # the new production, measured
    previous: str  # the warm version a failed bake moves @production back to
    phase: str  # Baking, Passed, Failed or Superseded
    startedAt: str  # when the new version took every request: the clock's start
    until: str
    failures: int
    failureLimit: int
    verdict: str
    measuredAt: str
    readAt: str
    metrics: list[MetricStatus]
    message: str
    endedAt: str
    aliasWrite: str


class ModelDeploymentStatus(TypedDict, total=False):
    """A ModelDeployment's status as the planner writes it."""

    observedGeneration: int
    replicas: int
    selector: str
    production: TrackStatus
    canary: CanaryTrackStatus
    lastCanary: LastCanaryStatus
    warm: list[WarmVersionStatus]
    fastSwitch: FastSwitchStatus
    bake: BakeStatus
    traffic: TrafficStatus
    registry: RegistryStatus
    history: list[HistorySpan]
    conditions: list[ConditionStatus]
