"""The bake window (spec.rollback.bake): after @production moves forward while the version it left is
kept warm, the new production is measured for `bake.duration` by the canary analysis' rules, and a
failed bake moves @production back to the warm version. Pure, like the rest of the planner.

A bake is one (model, version)'s watch after a move from `previous`; status.bake keeps it, and keeps an
ended one as the record until the next bake starts. Each pass (version mode only):

    advance(spec, previous bake, Moment, measurement) -> the bake after what happened since
    registry_writes.bake_writes(...)                  -> its alias change back, and its outcome tags
    next_pass_in(spec, bake, now)                     -> seconds to its next reading or its end

The promises it keeps, whatever the order of passes, restarts and outages:
- A bake starts only when @production moves forward (to a version that was not warm) and the version
  it left stays warm, and did not fail its own bake; a move back to a warm version (a rollback, the
  failed bake's own included) starts none.
- Its clock starts once the new version takes every request (the version it left is unrouted):
  `until` is that plus the duration. Readings are taken from then on, one interval apart.
- A failed measurement counts once. `failureLimit` of them end the bake Failed, and only then is
  @production moved back, once, while it still names the baked version (`AliasWrite`: the intent is
  in status before the write, which re-reads the alias first); never without a fresh registry
  answer. Any other move of @production ends a bake Superseded and is never written over.
- A bake holds while the registry does not answer: it is measured and may fail (its write waits
  for an answer), but it neither passes nor is superseded on aliases it cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, MetricResult, Verdict
from aliasroll.planning.canary import AliasWrite, AnalysisResult, stamp
from aliasroll.planning.state import EventRecord
from aliasroll.planning.status import BakeStatus, MetricStatus
from aliasroll.spec import BakeSpec, ModelDeploymentSpec

KEY = "bake"  # the status key


class Phase(StrEnum):
    BAKING = "Baking"  # measured (or waiting for the new version to take every request)
    PASSED = "Passed"  # its duration ended without failureLimit failed measurements
    FAILED = "Failed"  # failureLimit failed measurements: @production goes back to `previous`
    SUPERSEDED = "Superseded"  # @production moved during the bake: a human's move stands


ENDED = frozenset({Phase.PASSED, Phase.FAILED, Phase.SUPERSEDED})


@dataclass(frozen=True)
class Bake:
    """One version's bake, as status.bake keeps it."""

    version: str  # the new production, measured
    previous: str  # the warm version it left, where a failed bake moves @production back
    phase: Phase
    model: str | None = None
    started_at: datetime | None = None  # when the new version took every request: the clock's start
    failures: int = 0
    verdict: Verdict | None = None  # the last judged measurement's
    measured_at: datetime | None = None
    read_at: datetime | None = None  # the last reading, judged or not: the next is due an interval on
    measurements: tuple[Mapping[str, Any], ...] = ()
    message: str = ""
    ended_at: datetime | None = None
    alias_write: AliasWrite | None = None  # the move of @production back, around its write

    @property
    def ended(self) -> bool:
        return self.phase in ENDED


@dataclass(frozen=True)
class Moment:
    """What a pass knows that a bake decides on."""

    now: datetime
    production: str | None  # the version production serves after this pass
    production_before: str | None  # the one status said it served before this pass
    alias: str | None  # the version @production names in the registry (this pass's answer)
    fresh: bool  # False: the registry did not answer; `alias` is not known
    warm_before: frozenset[str]  # the versions status.warm listed before this pass
    warm: Mapping[str, bool]  # status.warm after it: version -> still routed (taking requests)


@dataclass(frozen=True)
class Advance:
    bake: Bake | None
    events: tuple[EventRecord, ...] = ()


# ------------------------------------------------------------------------------------ a pass


def advance(
    *,
    spec: ModelDeploymentSpec,
    previous: Bake | None,
    moment: Moment,
    analysis: AnalysisResult | None,
) -> Advance:
    """The bake after this pass: the one under way moved on (superseded, measured, ended), then a
    new one when @production moved forward from a version that stays warm."""
    rules = _rules(spec)
    if rules is None:
        return Advance(bake=None)
    if previous is not None and previous.model not in (None, spec.model.name):
        previous = None  # another model's bake says nothing of this one
    events: list[EventRecord] = []
    bake = previous
    if bake is not None:
        bake = (
            _settled_write(bake, moment)
            if bake.ended
            else _ongoing(spec, rules, bake, moment, analysis, events)
        )
    started = _started(spec, rules, bake, moment, events)
    return Advance(bake=started or bake, events=tuple(events))


def _rules(spec: ModelDeploymentSpec) -> BakeSpec | None:
    return spec.rollback.bake if spec.rollback is not None else None


def _started(
    spec: ModelDeploymentSpec, rules: BakeSpec, bake: Bake | None, moment: Moment, events: list[EventRecord]
) -> Bake | None:
    """A new bake: production moved forward this pass (to a version that was not warm) and the
    version it left is kept warm (a rollback target)."""
    new, left = moment.production, moment.production_before
    if new is None or left is None or new == left or new in moment.warm_before or left not in moment.warm:
        return None
    if bake is not None and bake.version == new and not bake.ended:
        return None  # already baking it
    if bake is not None and bake.version == left and bake.phase is Phase.FAILED:
        return None  # the version left failed its own bake: never a version to move back to
    message = (
        f"version {new} is measured for {_duration(rules.duration_seconds)} once it takes every request; "
        f"a failed bake moves @{spec.model.alias} back to version {left} (warm)"
    )
    events.append(EventRecord("Normal", reasons.BAKE_STARTED, message))
    return Bake(version=new, previous=left, phase=Phase.BAKING, model=spec.model.name, message=message)


def _ongoing(
    spec: ModelDeploymentSpec,
    rules: BakeSpec,
    bake: Bake,
    moment: Moment,
    analysis: AnalysisResult | None,
    events: list[EventRecord],
) -> Bake:
    """A bake under way: superseded by another move, its clock started, measured, failed or passed."""
    alias = spec.model.alias
    if moment.fresh and moment.alias != bake.version:
        message = (
            f"@{alias} was {_moved(moment.alias)} during the bake of version {bake.version}: the bake "
            "ends, and the move stands"
        )
        events.append(EventRecord("Normal", reasons.BAKE_SUPERSEDED, message))
        return replace(bake, phase=Phase.SUPERSEDED, message=message, ended_at=moment.now)
    if spec.suspend:
        return replace(bake, message="spec.suspend is true: the bake holds (no reading, no end)")
    if bake.started_at is None:
        if moment.warm.get(bake.previous, False):
            return replace(
                bake,
                message=f"waiting for version {bake.version} to take every request "
                f"(version {bake.previous} still does)",
            )
        until = moment.now + timedelta(seconds=rules.duration_seconds)
        bake = replace(bake, started_at=moment.now, message=f"measured until {stamp(until)}")
    bake = _measured(spec, rules, bake, analysis, events)
    if bake.ended:
        return replace(bake, ended_at=moment.now)
    return _passed(spec, rules, bake, moment, events)


def _measured(
    spec: ModelDeploymentSpec,
    rules: BakeSpec,
    bake: Bake,
    result: AnalysisResult | None,
    events: list[EventRecord],
) -> Bake:
    """A reading of the baked version: counted once; failureLimit failures end the bake Failed."""
    if result is None or result.version != bake.version or bake.started_at is None:
        return bake
    if result.measured_at < bake.started_at:
        return bake  # read before the clock started (another bake's moment): says nothing of this one
    bake = replace(bake, read_at=result.measured_at)
    if result.error is not None:
        return replace(
            bake, message=f"the metrics could not be read (not counted as a failure): {result.error}"
        )
    measurement = result.measurement
    if measurement is None:
        return replace(bake, message="baseline taken; the first measurement follows in one interval")
    bake = replace(
        bake,
        verdict=measurement.verdict,
        measured_at=result.measured_at,
        measurements=tuple(measurement.to_status().get("metrics", ())),
        message=_said(measurement),
    )
    if measurement.verdict is not Verdict.FAILED:
        return bake
    failures, limit = bake.failures + 1, rules.analysis.failure_limit
    bake = replace(bake, failures=failures)
    what = failed_metrics(measurement)
    if failures < limit:
        message = f"bake of version {bake.version}: {what} (failure {failures} of {limit})"
        events.append(EventRecord("Warning", reasons.ANALYSIS_FAILED, message))
        return bake
    message = (
        f"failed after {failures} failed measurement(s): {what}; moving @{spec.model.alias} back to "
        f"version {bake.previous} (warm)"
    )
    events.append(EventRecord("Warning", reasons.BAKE_FAILED, f"version {bake.version} {message}"))
    return replace(bake, phase=Phase.FAILED, message=message, alias_write=AliasWrite.PLANNED)


def _passed(
    spec: ModelDeploymentSpec, rules: BakeSpec, bake: Bake, moment: Moment, events: list[EventRecord]
) -> Bake:
    """A bake whose duration ended below failureLimit passes, on a fresh answer that @production still
    names it (without one it holds: a move may have been made meanwhile)."""
    assert bake.started_at is not None
    until = bake.started_at + timedelta(seconds=rules.duration_seconds)
    if moment.now < until or not moment.fresh:
        return bake
    if bake.failures:
        verdicts = f"{bake.failures} failed measurement(s), below the limit of {rules.analysis.failure_limit}"
    elif bake.verdict is Verdict.PASSED:
        verdicts = "the last measurement passed"
    else:
        verdicts = "no conclusive measurement: too little traffic, or the metrics could not be read"
    message = f"passed: {_duration(rules.duration_seconds)} without failureLimit failures ({verdicts})"
    events.append(EventRecord("Normal", reasons.BAKE_PASSED, f"version {bake.version} {message}"))
    return replace(bake, phase=Phase.PASSED, message=message, ended_at=moment.now)


def _settled_write(bake: Bake, moment: Moment) -> Bake:
    """A failed bake's move back: done once @production no longer names the baked version."""
    if bake.phase is not Phase.FAILED or bake.alias_write not in (AliasWrite.PLANNED, AliasWrite.ATTEMPTED):
        return bake
    if not moment.fresh or moment.alias == bake.version:
        return bake  # not made yet (retried while Planned), or its outcome unknown (Attempted)
    if moment.alias == bake.previous:
        return replace(bake, alias_write=AliasWrite.MADE)
    message = f"{bake.message}; @production was {_moved(moment.alias)} meanwhile: that move stands"
    return replace(bake, alias_write=None, message=message)


def measurement_due(spec: ModelDeploymentSpec, bake: Bake | None, now: datetime) -> bool:
    """Whether this pass reads the baked version: a bake whose clock runs, an interval after the last."""
    rules = _rules(spec)
    if rules is None or bake is None or bake.ended or bake.started_at is None or spec.suspend:
        return False
    return bake.read_at is None or now >= bake.read_at + timedelta(seconds=rules.analysis.interval_seconds)


def next_pass_in(spec: ModelDeploymentSpec, bake: Bake | None, now: datetime) -> float | None:
    """Seconds until the bake's next reading (0: due already) or its end."""
    rules = _rules(spec)
    if rules is None or bake is None or bake.ended or bake.started_at is None or spec.suspend:
        return None
    due = [0.0]  # never read yet: due now
    if bake.read_at is not None:
        reading = bake.read_at + timedelta(seconds=rules.analysis.interval_seconds)
        due = [max(0.0, (reading - now).total_seconds())]
    until = bake.started_at + timedelta(seconds=rules.duration_seconds)
    due.append(max(0.0, (until - now).total_seconds()))
    return min(due)


def reading_key(uid: str) -> str:
    """Where the reconciler and the analyzer keep a resource's bake readings: beside its canary's
    (kept under its uid), so a canary run and a bake at the same time never replace each other's."""
    return f"{uid}/bake"


# ------------------------------------------------------------------------------------ words


def failed_metrics(measurement: Measurement) -> str:
    """The metrics past their bounds, with value and bound: 'error rate 5.00% above its bound 1.00%'."""
    failed = [metric for metric in measurement.metrics if metric.verdict is Verdict.FAILED]
    return "; ".join(_metric_words(metric) for metric in failed) or measurement.message


def _metric_words(metric: MetricResult) -> str:
    if metric.metric == "errorRate":
        value, bound = metric.canary or 0, metric.bound or 0
        return f"error rate {value:.2f}% above its bound {bound:.2f}% ({metric.bound_kind})"
    value, bound = (metric.canary or 0) * 1000, (metric.bound or 0) * 1000
    return f"p99 latency {value:.0f} ms above its bound {bound:.0f} ms ({metric.bound_kind})"


def _moved(alias: str | None) -> str:
    return f"moved to version {alias}" if alias is not None else "removed"


def _said(measurement: Measurement) -> str:
    """A measurement's message in the bake's words: the measured version is production now, and the
    warm version, which answers nothing, is no figure to count."""
    said = f"{measurement.verdict}: {measurement.message}"
    said = re.sub(
        r"production answered 0 requests \(fewer than \d+\)", "the warm version takes no requests", said
    )
    return said.replace(", production 0", "").replace("canary ", "")


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# ------------------------------------------------------------------------------------ status


def to_status(bake: Bake, spec: ModelDeploymentSpec) -> BakeStatus:
    """status.bake."""
    entry: BakeStatus = {"version": bake.version, "previous": bake.previous, "phase": bake.phase.value}
    if bake.model is not None:
        entry["model"] = bake.model
    rules = _rules(spec)
    if bake.started_at is not None:
        entry["startedAt"] = stamp(bake.started_at)
        if rules is not None:
            entry["until"] = stamp(bake.started_at + timedelta(seconds=rules.duration_seconds))
    entry["failures"] = bake.failures
    if rules is not None:
        entry["failureLimit"] = rules.analysis.failure_limit
    if bake.verdict is not None:
        entry["verdict"] = bake.verdict.value
    if bake.measured_at is not None:
        entry["measuredAt"] = stamp(bake.measured_at)
    if bake.read_at is not None and bake.read_at != bake.measured_at:
        entry["readAt"] = stamp(bake.read_at)
    if bake.measurements:
        entry["metrics"] = [cast("MetricStatus", dict(metric)) for metric in bake.measurements]
    if bake.message:
        entry["message"] = bake.message
    if bake.ended_at is not None:
        entry["endedAt"] = stamp(bake.ended_at)
    if bake.alias_write is not None:
        entry["aliasWrite"] = bake.alias_write.value
    return entry


def from_status(entry: Mapping[str, Any] | None) -> Bake | None:
    """The bake status.bake describes; None for a status without one (or one that cannot be read)."""
    if not entry or not entry.get("version") or not entry.get("previous"):
        return None
    try:
        phase = Phase(str(entry.get("phase")))
        verdict = Verdict(str(entry["verdict"])) if entry.get("verdict") else None
        alias_write = AliasWrite(str(entry["aliasWrite"])) if entry.get("aliasWrite") else None
    except ValueError:
        return None
    measured_at = _time(entry.get("measuredAt"))
    return Bake(
        version=str(entry["version"]),
        previous=str(entry["previous"]),
        phase=phase,
        model=str(entry["model"]) if entry.get("model") else None,
        started_at=_time(entry.get("startedAt")),
        failures=int(entry.get("failures") or 0),
        verdict=verdict,
        measured_at=measured_at,
        read_at=_time(entry.get("readAt")) or measured_at,
        measurements=tuple(entry.get("metrics") or ()),
        message=str(entry.get("message") or ""),
        ended_at=_time(entry.get("endedAt")),
        alias_write=alias_write,
    )
