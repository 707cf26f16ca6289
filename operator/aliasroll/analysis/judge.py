"""Pass, fail or inconclusive: one measurement of the canary against production (pure).

Each metric is held to the strictest bound that applies: an absolute one (canary error rate at most
N %, canary p99 at most N s) and a relative one (canary error rate at most production's plus N
points, canary p99 at most production's times F). A relative bound needs a production figure worth
comparing with: production must have answered at least as many requests as the canary must, or the
bound is skipped and the message says so. A canary that answered too few requests is never judged:
the measurement is inconclusive, neither passed nor failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from aliasroll.analysis.window import Window

MetricName = Literal["errorRate", "latencyP99"]
BoundKind = Literal["absolute", "relative"]

# Comparisons forgive float noise (0.1 + 0.2 > 0.3), never a real excess.
_TOLERANCE = 1e-9


class Verdict(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Limits:
    min_canary_requests: int
    max_error_percent: float | None = None
    max_error_increase_points: float | None = None  # canary error % <= production's + N points
    max_p99_seconds: float | None = None
    max_p99_ratio: float | None = None  # canary p99 <= production p99 x F


@dataclass(frozen=True)
class MetricResult:
    metric: MetricName
    canary: float | None
    production: float | None
    bound: float | None  # the bound the canary was held to; None when none could apply
    bound_kind: BoundKind | None
    verdict: Verdict
    message: str
    relative_skipped: str | None = None  # why the relative bound could not apply, when it was set

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"metric": self.metric, "verdict": str(self.verdict)}
        digits = 3 if self.metric == "errorRate" else 4
        for key, value in (("canary", self.canary), ("production", self.production), ("bound", self.bound)):
            if value is not None:
                status[key] = round(float(value), digits)
        if self.bound_kind is not None:
            status["boundKind"] = self.bound_kind
        if self.relative_skipped is not None:
            status["relativeSkipped"] = True
        return status


@dataclass(frozen=True)
class Measurement:
    verdict: Verdict
    metrics: tuple[MetricResult, ...]
    canary_requests: float
    production_requests: float
    message: str

    def to_status(self) -> dict[str, Any]:
        """For status.canary.lastMeasurements: small, camelCase, absent rather than null."""
        return {
            "verdict": str(self.verdict),
            "canaryRequests": round(self.canary_requests),
            "productionRequests": round(self.production_requests),
            "metrics": [metric.to_status() for metric in self.metrics],
            "message": self.message,
        }

    def summary(self) -> str:
        """One line, for events and MLflow tags."""
        return f"{self.verdict}: {self.message}"


def judge(limits: Limits, *, canary: Window, production: Window) -> Measurement:
    counts = f"canary {_count(canary.requests)} requests, production {_count(production.requests)}"
    needed = max(limits.min_canary_requests, 1)
    if canary.requests < needed:
        return Measurement(
            verdict=Verdict.INCONCLUSIVE,
            metrics=(),
            canary_requests=canary.requests,
            production_requests=production.requests,
            message=f"too little canary traffic to judge: {counts}, at least {needed} canary requests needed",
        )
    comparable = production.requests >= needed
    skipped = f"production answered {_count(production.requests)} requests (fewer than {needed})"
    metrics = [
        metric
        for metric in (
            _error_rate(limits, canary, production, comparable=comparable, skipped=skipped),
            _latency(limits, canary, production, comparable=comparable, skipped=skipped),
        )
        if metric is not None
    ]
    verdicts = {metric.verdict for metric in metrics}
    if Verdict.FAILED in verdicts:
        verdict = Verdict.FAILED
    elif Verdict.INCONCLUSIVE in verdicts:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.PASSED
    parts = [metric.message for metric in metrics] or ["no bound is set"]
    reasons = dict.fromkeys(m.relative_skipped for m in metrics if m.relative_skipped is not None)
    parts += [f"relative bound skipped: {reason}" for reason in reasons]
    return Measurement(
        verdict=verdict,
        metrics=tuple(metrics),
        canary_requests=canary.requests,
        production_requests=production.requests,
        message="; ".join([*parts, counts]),
    )


def _error_rate(
    limits: Limits, canary: Window, production: Window, *, comparable: bool, skipped: str
) -> MetricResult | None:
    """The canary's error rate against its bounds, when one is set. A relative bound needs a
    production that answered enough requests (`comparable`), else it is skipped and says why."""
    if limits.max_error_percent is None and limits.max_error_increase_points is None:
        return None
    relative = None
    if limits.max_error_increase_points is not None and comparable:
        relative = (production.error_percent or 0.0) + limits.max_error_increase_points
    return _judge_metric(
        "errorRate",
        canary=canary.error_percent,
        production=production.error_percent if comparable else None,
        absolute=limits.max_error_percent,
        relative=relative,
        relative_rule=f"production + {limits.max_error_increase_points or 0:g} points",
        skipped=skipped if limits.max_error_increase_points is not None and not comparable else None,
        show=_percent,
    )


def _latency(
    limits: Limits, canary: Window, production: Window, *, comparable: bool, skipped: str
) -> MetricResult | None:
    """The canary's p99 against its bounds, when one is set; the relative bound also needs
    production's latency histogram."""
    if limits.max_p99_seconds is None and limits.max_p99_ratio is None:
        return None
    production_p99 = production.p99_seconds if comparable else None
    relative = None
    if limits.max_p99_ratio is not None and production_p99 is not None:
        relative = production_p99 * limits.max_p99_ratio
    latency_skip = skipped
    if comparable and production_p99 is None:
        latency_skip = "production has no latency histogram"
    return _judge_metric(
        "latencyP99",
        canary=canary.p99_seconds,
        production=production_p99,
        absolute=limits.max_p99_seconds,
        relative=relative,
        relative_rule=f"production x {limits.max_p99_ratio or 0:g}",
        skipped=latency_skip if limits.max_p99_ratio is not None and relative is None else None,
        show=_seconds,
    )


def _judge_metric(
    metric: MetricName,
    *,
    canary: float | None,
    production: float | None,
    absolute: float | None,
    relative: float | None,
    relative_rule: str,
    skipped: str | None,
    show: Callable[[float | None], str],
) -> MetricResult:
    name = "error rate" if metric == "errorRate" else "p99 latency"
    against = f" (production {show(production)})" if production is not None else ""
    note = " (the relative bound is skipped)" if skipped is not None else ""
    # The strictest bound that applies: passing it passes them all, failing it fails one.
    bounds: list[tuple[float, BoundKind, str]] = []
    if absolute is not None:
        bounds.append((absolute, "absolute", f"limit {show(absolute)}"))
    if relative is not None:
        bounds.append((relative, "relative", f"limit {show(relative)} = {relative_rule}"))
    if canary is None or not bounds:
        why = f"canary {name} unknown" if canary is None else f"no bound applies to the {name}"
        return MetricResult(
            metric=metric,
            canary=canary,
            production=production,
            bound=None,
            bound_kind=None,
            verdict=Verdict.INCONCLUSIVE,
            message=f"{why}{note}",
            relative_skipped=skipped,
        )
    bound, kind, said = min(bounds, key=lambda entry: entry[0])
    passed = canary <= bound + _TOLERANCE
    verdict = Verdict.PASSED if passed else Verdict.FAILED
    sign = "<=" if passed else ">"
    kind_note = f"{kind}; the relative bound is skipped" if skipped is not None else kind
    return MetricResult(
        metric=metric,
        canary=canary,
        production=production,
        bound=bound,
        bound_kind=kind,
        verdict=verdict,
        message=f"canary {name} {show(canary)}{against} {sign} {said} ({kind_note})",
        relative_skipped=skipped,
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def _count(value: float) -> str:
    return f"{value:.0f}"
