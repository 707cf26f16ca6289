"""The watched canary: which step a canary version is at, what its analysis says, and when it is
promoted or aborted. Pure, like the rest of the planner.

A canary *run* is one version's way through the steps; status.canary keeps it beside the canary
track it describes, so a restarted operator resumes at the same step (its start time is in status)
and posts no event twice. Each pass:

    advance(previous run, registry, measurement, now)  -> the run after what happened since
    weight(run)                                       -> the share of requests to ask for now
    settle(run, whether that share is in place, now)  -> the step's clock starts once it is

A run ends Aborted (a failed analysis: its workload goes, and the same version is not retried
until @canary moves to another one) or Succeeded (production runs the version: promoted by the
operator, or by a human moving @production). status.canary describes only a canary track that
runs (an ended run's pods while they drain, with its phase); how the run ended is kept in
status.lastCanary (`to_record`) until @canary names another version, and for good in the history's
span (its outcome) and the version's tags in MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, Verdict
from aliasroll.planning.state import EventRecord
from aliasroll.spec import CanarySpec, ModelDeploymentSpec, Promotion


class Phase(StrEnum):
    PROGRESSING = "Progressing"  # pods or routes moving to the step's weight, or a step without analysis
    ANALYZING = "Analyzing"  # at the step's weight, measured every interval
    PAUSED = "Paused"  # spec.suspend: the step holds (its clock restarts on resume)
    AWAITING_PROMOTION = "AwaitingPromotion"  # every step passed (or a fixed weight): a human promotes
    PROMOTING = "Promoting"  # @production moves (or moved) to the canary version; production rolls
    ABORTED = "Aborted"
    SUCCEEDED = "Succeeded"


ENDED = frozenset({Phase.ABORTED, Phase.SUCCEEDED})
LAST_CANARY = "lastCanary"  # the status key of an ended run's record
MEASURED = frozenset({Phase.ANALYZING, Phase.AWAITING_PROMOTION})


@dataclass(frozen=True)
class CanaryRun:
    """One canary version's progress, as status.canary keeps it."""

    version: str
    phase: Phase
    step_index: int = 0  # 0-based; len(steps) once every step passed
    step_started_at: datetime | None = None  # when the step's weight was in place
    failures: int = 0
    verdict: Verdict | None = None  # the last measurement's
    measured_at: datetime | None = None
    measurements: tuple[Mapping[str, Any], ...] = ()  # the last measurement's metrics, for status
    message: str = ""
    ended_at: datetime | None = None
    # Promoting by the operator: the version @production pointed at when it decided to move it. The
    # alias is moved only while it still points there, so a human's later move always wins.
    promoting_from: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in ENDED


@dataclass(frozen=True)
class AnalysisResult:
    """What the reconciler measured this pass, for `version` (it measures when `measurement_due`)."""

    version: str
    measured_at: datetime
    measurement: Measurement | None = None  # None: a baseline was taken, nothing to judge yet
    error: str | None = None  # the metrics could not be read: never counts as a failure
    # Where the judged window began (the reading it is counted from): a step passes only on a
    # measurement whose whole window lies inside it. None with a measurement: one interval back.
    window_start: datetime | None = None


@dataclass(frozen=True)
class Registry:
    """What the registry says this pass, reduced to what a run decides on."""

    canary_alias: str | None  # the version @canary points at (usable or not); None: no alias
    production_alias: str | None  # the version @production points at
    production_settled: str | None  # the version production's pods all run, rolled out


@dataclass(frozen=True)
class Advance:
    run: CanaryRun | None
    events: tuple[EventRecord, ...] = ()


def from_status(entry: Mapping[str, Any] | None) -> CanaryRun | None:
    """The run status.canary describes; None for a status written before runs existed."""
    if not entry or not entry.get("version") or not entry.get("phase"):
        return None
    try:
        phase = Phase(entry["phase"])
    except ValueError:
        return None
    analysis = entry.get("analysis") or {}
    verdict = analysis.get("verdict")
    return CanaryRun(
        version=str(entry["version"]),
        phase=phase,
        step_index=_step_index(entry),
        step_started_at=_time(entry.get("stepStartedAt")),
        failures=int(analysis.get("failures") or 0),
        verdict=_verdict(verdict),
        measured_at=_time(analysis.get("measuredAt")),
        measurements=tuple(analysis.get("metrics") or ()),
        message=str(entry.get("message") or ""),
        ended_at=_time(entry.get("endedAt")),
        promoting_from=entry.get("promotingFrom") or None,
    )


def recorded_run(status: Mapping[str, Any]) -> CanaryRun | None:
    """The run a status describes: the running canary's (status.canary), else the ended run's
    record (status.lastCanary). An ended run's draining pods carry only its phase in status.canary;
    a status written before lastCanary existed kept the whole record there, and is read as it was."""
    running = from_status(status.get("canary"))
    if running is not None and not running.ended:
        return running
    return from_status(status.get(LAST_CANARY)) or running


def to_record(run: CanaryRun, canary: CanarySpec) -> dict[str, Any]:
    """status.lastCanary: how an ended run ended, with only what it still decides on (the version
    not to run again, the outcome and its tags' contents); the rest lived with the pods."""
    entry = {
        key: value
        for key, value in to_status(run, canary).items()
        if key in ("version", "phase", "step", "message", "endedAt")
    }
    if canary.analysis is not None:
        analysis: dict[str, Any] = {"failures": run.failures}
        if run.verdict is not None:
            analysis["verdict"] = run.verdict.value
        if run.measurements:
            analysis["metrics"] = [dict(metric) for metric in run.measurements]
        entry["analysis"] = analysis
    return entry


def to_status(run: CanaryRun, canary: CanarySpec) -> dict[str, Any]:
    """The run's fields of status.canary (beside the version, pods and weight the planner adds)."""
    entry: dict[str, Any] = {"version": run.version, "phase": run.phase.value}
    if canary.steps:
        shown = min(run.step_index + 1, len(canary.steps))
        entry |= {"stepIndex": run.step_index, "step": f"{shown}/{len(canary.steps)}"}
    if run.step_started_at is not None:
        entry["stepStartedAt"] = stamp(run.step_started_at)
    if canary.analysis is not None:
        analysis: dict[str, Any] = {"failures": run.failures, "failureLimit": canary.analysis.failure_limit}
        if run.verdict is not None:
            analysis["verdict"] = run.verdict.value
        if run.measured_at is not None:
            analysis["measuredAt"] = stamp(run.measured_at)
        if run.measurements:
            analysis["metrics"] = [dict(metric) for metric in run.measurements]
        entry["analysis"] = analysis
    if run.message:
        entry["message"] = run.message
    if run.ended_at is not None:
        entry["endedAt"] = stamp(run.ended_at)
    if run.promoting_from is not None:
        entry["promotingFrom"] = run.promoting_from
    return entry


def advance(
    *,
    spec: ModelDeploymentSpec,
    previous: CanaryRun | None,
    registry: Registry,
    analysis: AnalysisResult | None,
    now: datetime,
) -> Advance:
    canary = spec.canary
    if canary is None or not spec.canary_wanted:
        return Advance(run=None)  # no canary asked for: nothing to keep
    wanted = registry.canary_alias
    if previous is not None and (wanted is None or wanted == previous.version):
        return _same_version(spec, canary, previous, registry, analysis, now)
    if wanted is None or wanted == registry.production_alias:
        return Advance(run=None)  # no canary alias, or one on production's version: no canary
    # A new version under @canary: its own run from the first step.
    first = CanaryRun(version=wanted, phase=Phase.PROGRESSING)
    return Advance(run=_paused(spec, first))


def _same_version(
    spec: ModelDeploymentSpec,
    canary: CanarySpec,
    run: CanaryRun,
    registry: Registry,
    analysis: AnalysisResult | None,
    now: datetime,
) -> Advance:
    if run.ended:
        return Advance(run=run)  # the record stays until @canary names another version
    if registry.production_alias == run.version:
        # Promoted, by the operator's own alias move or a human's: the remaining steps are skipped.
        if registry.production_settled == run.version:
            if not canary.watched:
                return Advance(run=None)  # a plain fixed weight keeps no record, as before runs existed
            message = f"production runs version {run.version} on every replica"
            return Advance(run=replace(run, phase=Phase.SUCCEEDED, message=message, ended_at=now))
        message = f"@{spec.model.alias} points at version {run.version}: production is rolling to it"
        return Advance(run=replace(run, phase=Phase.PROMOTING, message=message))
    if registry.canary_alias is None:
        return Advance(run=None)  # @canary was deleted: the canary ends, nothing to record
    if run.phase is Phase.PROMOTING:
        if registry.production_alias == run.promoting_from:
            return Advance(run=run)  # the operator's alias move is still to be seen in the registry
        # Someone moved @production elsewhere meanwhile: theirs stands, the promotion is called off.
        message = (
            f"@{spec.model.alias} was moved to version {registry.production_alias} while the operator "
            f"was promoting version {run.version}: promotion called off; move @{spec.model.alias} to promote"
        )
        event = EventRecord("Warning", reasons.PROMOTION_CALLED_OFF, message)
        return Advance(
            run=replace(run, phase=Phase.AWAITING_PROMOTION, promoting_from=None, message=message),
            events=(event,),
        )
    if spec.suspend:
        return Advance(run=_paused(spec, run))
    if run.phase is Phase.PAUSED:
        run = replace(run, phase=Phase.PROGRESSING, step_started_at=None, message="")

    events: list[EventRecord] = []
    run = _measured(canary, run, analysis, events)
    if run.phase is Phase.ABORTED:
        return Advance(run=replace(run, ended_at=now), events=tuple(events))
    run = _next_step(spec, canary, run, registry, now, events)
    return Advance(run=run, events=tuple(events))


def _paused(spec: ModelDeploymentSpec, run: CanaryRun) -> CanaryRun:
    if not spec.suspend:
        return run
    return replace(run, phase=Phase.PAUSED, message="spec.suspend is true: the canary holds its step")


def _measured(
    canary: CanarySpec, run: CanaryRun, result: AnalysisResult | None, events: list[EventRecord]
) -> CanaryRun:
    if canary.analysis is None or result is None or result.version != run.version:
        return run
    if run.phase not in MEASURED:
        return run
    run = replace(run, measured_at=result.measured_at)
    if result.error is not None:
        return replace(
            run, message=f"the analysis could not read metrics (not counted as a failure): {result.error}"
        )
    measurement = result.measurement
    if measurement is None:
        return replace(run, message="baseline taken; the first measurement follows in one interval")
    before = run.verdict
    run = replace(
        run,
        verdict=measurement.verdict,
        measurements=tuple(measurement.to_status().get("metrics", ())),
        message=measurement.message,
    )
    if measurement.verdict is Verdict.INCONCLUSIVE:
        if before is not Verdict.INCONCLUSIVE:  # told once per stretch, not every interval
            message = (
                f"version {run.version}: {measurement.message}; the step holds until traffic allows a verdict"
            )
            events.append(EventRecord("Normal", reasons.ANALYSIS_INCONCLUSIVE, message))
        return run
    if measurement.verdict is not Verdict.FAILED:
        return run
    failures = run.failures + 1
    limit = canary.analysis.failure_limit
    run = replace(run, failures=failures)
    if failures < limit:
        events.append(
            EventRecord(
                "Warning",
                reasons.ANALYSIS_FAILED,
                f"version {run.version}: {measurement.summary()} (failure {failures} of {limit})",
            )
        )
        return run
    message = f"aborted after {failures} failed measurement(s): {measurement.summary()}"
    events.append(EventRecord("Warning", reasons.CANARY_ABORTED, f"version {run.version} {message}"))
    return replace(run, phase=Phase.ABORTED, message=message)


def _next_step(
    spec: ModelDeploymentSpec,
    canary: CanarySpec,
    run: CanaryRun,
    registry: Registry,
    now: datetime,
    events: list[EventRecord],
) -> CanaryRun:
    """Moves past every step whose time is up and whose analysis passed in it."""
    if not canary.steps or run.phase not in (Phase.PROGRESSING, Phase.ANALYZING):
        return run
    if run.step_index >= len(canary.steps) or run.step_started_at is None:
        return run
    step = canary.steps[run.step_index]
    if now < run.step_started_at + timedelta(seconds=step.duration_seconds):
        return run
    if canary.analysis is not None and not _passed_in_step(run, canary.analysis.interval_seconds):
        if run.verdict is Verdict.INCONCLUSIVE:
            return replace(run, message=f"holding step {run.step_index + 1}: {run.message}")
        return run  # the step's time is up; its first passed measurement ends it
    following = run.step_index + 1
    run = replace(run, step_index=following, step_started_at=None, phase=Phase.PROGRESSING, message="")
    if following < len(canary.steps):
        return run
    if canary.promotion is Promotion.AUTO:
        message = f"every step passed: moving @{spec.model.alias} to version {run.version} in MLflow"
        events.append(EventRecord("Normal", reasons.CANARY_PROMOTING, message))
        return replace(run, phase=Phase.PROMOTING, message=message, promoting_from=registry.production_alias)
    message = f"every step passed: move @{spec.model.alias} to version {run.version} to promote it"
    events.append(EventRecord("Normal", reasons.AWAITING_PROMOTION, message))
    return replace(run, phase=Phase.AWAITING_PROMOTION, message=message)


def _passed_in_step(run: CanaryRun, interval_seconds: float) -> bool:
    """The last measurement passed, and its window (one interval back) lies within the step: one
    taken right after the step began would mostly judge the step before it."""
    return (
        run.verdict is Verdict.PASSED
        and run.measured_at is not None
        and run.step_started_at is not None
        and run.measured_at >= run.step_started_at + timedelta(seconds=interval_seconds)
    )


def weight(spec: ModelDeploymentSpec, run: CanaryRun | None) -> int:
    """The share of requests to ask for the canary now (0: no canary workload)."""
    canary = spec.canary
    if canary is None or run is None or run.ended:
        return 0
    if not canary.steps:
        return canary.weight
    return canary.steps[min(run.step_index, len(canary.steps) - 1)].weight


def settle(
    spec: ModelDeploymentSpec, run: CanaryRun | None, *, in_place: bool, share: str, now: datetime
) -> Advance:
    """Starts the step's clock once its weight is in place (pods available, routes written).
    `share` says the canary's share in place now, and the one asked where they differ: the step's
    event states it (its message in status does not, since it outlives the pass)."""
    canary = spec.canary
    if canary is None or run is None or run.phase is not Phase.PROGRESSING or not in_place:
        return Advance(run=run)
    if not canary.steps:
        # A fixed weight: it serves at that weight (measured, with an analysis) until a human promotes.
        message = f"move @{spec.model.alias} to version {run.version} to promote it"
        return Advance(run=replace(run, phase=Phase.AWAITING_PROMOTION, message=message))
    if run.step_started_at is not None:
        return Advance(run=run)
    phase = Phase.ANALYZING if canary.analysis is not None else Phase.PROGRESSING
    step = canary.steps[run.step_index]
    message = f"step {run.step_index + 1}/{len(canary.steps)} for {_duration(step.duration_seconds)}"
    event = EventRecord("Normal", reasons.CANARY_STEP, f"version {run.version} {message}: {share}")
    return Advance(run=replace(run, phase=phase, step_started_at=now, message=message), events=(event,))


def measurement_due(spec: ModelDeploymentSpec, run: CanaryRun | None, now: datetime) -> bool:
    """Whether this pass measures: an analysed run at its weight, one interval after the last."""
    canary = spec.canary
    if canary is None or canary.analysis is None or run is None or run.phase not in MEASURED or spec.suspend:
        return False
    return run.measured_at is None or now >= run.measured_at + timedelta(
        seconds=canary.analysis.interval_seconds
    )


def next_pass_in(spec: ModelDeploymentSpec, run: CanaryRun | None, now: datetime) -> float | None:
    """Seconds until the run needs a pass of its own (a step ends, a measurement is due)."""
    canary = spec.canary
    if canary is None or run is None or run.ended or spec.suspend:
        return None
    due: list[datetime] = []
    if canary.analysis is not None and run.phase in MEASURED:
        last = run.measured_at or now
        due.append(last + timedelta(seconds=canary.analysis.interval_seconds))
    if canary.steps and run.step_started_at is not None and run.step_index < len(canary.steps):
        due.append(run.step_started_at + timedelta(seconds=canary.steps[run.step_index].duration_seconds))
    if not due:
        return None
    return max(0.0, (min(due) - now).total_seconds())


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _step_index(entry: Mapping[str, Any]) -> int:
    """stepIndex, or (in an ended run's record, which keeps only `step`) the index `step` shows."""
    if entry.get("stepIndex") is not None:
        return int(entry["stepIndex"])
    shown, _, _ = str(entry.get("step") or "").partition("/")
    return int(shown) - 1 if shown.isdigit() and int(shown) > 0 else 0


def _verdict(text: object) -> Verdict | None:
    try:
        return Verdict(str(text)) if text else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
