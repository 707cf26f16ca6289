"""The watched canary: which step a canary version is at, what its analysis says, and when it is
promoted or aborted. Pure, like the rest of the planner.

A canary *run* is one (model, version)'s way through the steps; status.canary keeps it beside the
canary track it describes, so a restarted operator resumes at the same step (its start time is in
status) and posts no event twice. Each pass:

    advance(previous run, registry, measurement, now)  -> the run after what happened since
    weight(run)                                       -> the share of requests to ask for now
    settle(run, whether that share is in place, now)  -> the step's clock starts once it is

A run ends Aborted (a failed analysis, or no progress within spec.canary.progressDeadline: its
workload goes, and the same version is not retried until @canary moves to another one) or Succeeded
(production runs the version: promoted by the operator, or by a human moving @production).
status.canary describes only a canary track that runs (an ended run's pods while they drain, with
its phase); how the run ended is kept in status.lastCanary (`to_record`) until @canary names another
version, and for good in the history's span (its outcome) and the version's tags in MLflow.

The promises this module keeps, whatever the order of passes, restarts, outages and edits:
- A step passes, and so a promotion happens, only on a Passed measurement whose whole window lies
  inside the step. A reading that could not be judged (metrics unreadable, a baseline after a
  restart, too little traffic) never stands in for one: the step holds, and says why and since when.
- A failed measurement counts once, whatever the registry does meanwhile (a registry outage only
  holds back the decisions that need it: starting and ending runs on alias moves).
- The operator moves @production at most once per run, and only while it still points where the run
  found it (`AliasWrite`: the intent is in status before the write, which re-reads the alias first).
  Once made, any other value is a human's and wins; so does any move made before it.
- The phase follows from the spec in force and the run (`_conform`): an edit of the steps, the
  analysis or the promotion mode maps a run in flight to a state it can finish from.
- The next pass is asked for at the next future event only (a step's end, a measurement, the progress
  deadline): a step that holds is not passed every second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, Verdict
from aliasroll.planning import gate as holdout
from aliasroll.planning.gate import GateRecord
from aliasroll.planning.state import EventRecord, ObservedGateJob
from aliasroll.planning.status import (
    CanaryAnalysisStatus,
    CanaryTrackStatus,
    LastCanaryAnalysis,
    LastCanaryStatus,
    MetricStatus,
)
from aliasroll.spec import CanarySpec, ModelDeploymentSpec, OnAbort, Promotion


class Phase(StrEnum):
    GATING = "Gating"  # spec.canary.gate: the holdout Job judges the version; no pods, no requests
    PROGRESSING = "Progressing"  # pods or routes moving to the step's weight, or a step without analysis
    ANALYZING = "Analyzing"  # at the step's weight, measured every interval
    PAUSED = "Paused"  # spec.suspend: the step holds (its clock restarts on resume)
    AWAITING_PROMOTION = "AwaitingPromotion"  # every step passed (or a fixed weight): a human promotes
    PROMOTING = "Promoting"  # @production moves (or moved) to the canary version; production rolls
    ABORTED = "Aborted"
    SUCCEEDED = "Succeeded"


class AliasWrite(StrEnum):
    """The operator's own alias change for a run (promotion: @production to the run's version; an
    abort with onAbort removeAlias: @canary removed), as status records it around the write."""

    PLANNED = "Planned"  # decided: the next write of status says it is being made, then it is made
    ATTEMPTED = "Attempted"  # status says it is being made: never made a second time
    MADE = "Made"  # the registry took it


ENDED = frozenset({Phase.ABORTED, Phase.SUCCEEDED})
LAST_CANARY = "lastCanary"  # the status key of an ended run's record
MEASURED = frozenset({Phase.ANALYZING, Phase.AWAITING_PROMOTION})
# Waiting for what a run needs (its weight in place, a measurement that lets its step pass) counts
# towards the progress deadline in these phases only: a human's turn (AwaitingPromotion), a pause
# and production's own rollout (Promoting) do not.
DEADLINED = frozenset({Phase.PROGRESSING, Phase.ANALYZING})
HOLDING = "holding step"  # the start of the message of a step whose time is up but has not passed


@dataclass(frozen=True)
class CanaryRun:
    """One canary version's progress, as status.canary keeps it."""

    version: str
    phase: Phase
    # The registered model the version belongs to (a run is one model's version: a rename starts
    # another). None in a status written before runs named their model: taken as the spec's.
    model: str | None = None
    step_index: int = 0  # 0-based; len(steps) once every step passed
    step_started_at: datetime | None = None  # when the step's weight was in place
    failures: int = 0
    # The last judged measurement (Passed, Failed or Inconclusive) and the window it judged.
    verdict: Verdict | None = None
    measured_at: datetime | None = None
    window_start: datetime | None = None
    measurements: tuple[Mapping[str, Any], ...] = ()  # its metrics, for status
    # The last reading of the metrics, judged or not (a baseline, an unreadable source): the next
    # one is due an interval after it.
    read_at: datetime | None = None
    # Since when the run waits for what it needs to move on (its weight in place; a measurement that
    # lets a step whose time is up pass). The progress deadline counts from it; status shows it.
    waiting_since: datetime | None = None
    message: str = ""
    ended_at: datetime | None = None
    # The version @production pointed at when the run began: the operator promotes only from there,
    # so a human's move of @production during the run (a hotfix, a rollback) is never overwritten.
    promoting_from: str | None = None
    alias_write: AliasWrite | None = None
    gate: GateRecord | None = None  # spec.canary.gate: its Job, then its verdict

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    def of(self, model: str) -> bool:
        return self.model is None or self.model == model


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
    # False when the registry did not answer this pass and the aliases are the last ones known:
    # runs go on (measured, stepped, aborted) but none starts or ends on an alias move.
    fresh: bool = True


@dataclass(frozen=True)
class Gates:
    """What a pass knows of the holdout gate's Jobs: the resource's name (their names start with
    it) and the Jobs observed."""

    owner: str
    jobs: tuple[ObservedGateJob, ...] = ()


@dataclass(frozen=True)
class Advance:
    run: CanaryRun | None
    events: tuple[EventRecord, ...] = ()


# ------------------------------------------------------------------------------------ status


def from_status(entry: Mapping[str, Any] | None) -> CanaryRun | None:
    """The run status.canary (or status.lastCanary) describes; None for a status without one."""
    if not entry or not entry.get("version") or not entry.get("phase"):
        return None
    try:
        phase = Phase(entry["phase"])
    except ValueError:
        return None
    analysis = entry.get("analysis") or {}
    return CanaryRun(
        version=str(entry["version"]),
        phase=phase,
        model=str(entry["model"]) if entry.get("model") else None,
        step_index=_step_index(entry),
        step_started_at=_time(entry.get("stepStartedAt")),
        failures=int(analysis.get("failures") or 0),
        verdict=_verdict(analysis.get("verdict")),
        measured_at=_time(analysis.get("measuredAt")),
        window_start=_time(analysis.get("windowStart")),
        measurements=tuple(analysis.get("metrics") or ()),
        read_at=_time(analysis.get("readAt")) or _time(analysis.get("measuredAt")),
        waiting_since=_time(entry.get("waitingSince")),
        message=str(entry.get("message") or ""),
        ended_at=_time(entry.get("endedAt")),
        promoting_from=entry.get("promotingFrom") or None,
        alias_write=_alias_write(entry.get("aliasWrite")),
        gate=GateRecord.from_status(entry.get("gate")),
    )


def recorded_run(status: Mapping[str, Any]) -> CanaryRun | None:
    """The run a status describes: the running canary's (status.canary), else the ended run's
    record (status.lastCanary). An ended run's draining pods carry only its phase in status.canary;
    a status written before lastCanary existed kept the whole record there, and is read as it was."""
    running = from_status(status.get("canary"))
    if running is not None and not running.ended:
        return running
    return from_status(status.get(LAST_CANARY)) or running


# What status.lastCanary keeps of status.canary's fields (the analysis is its own, below).
RECORD_KEYS = ("model", "version", "phase", "step", "message", "endedAt", "aliasWrite", "gate")


def to_record(run: CanaryRun, canary: CanarySpec) -> LastCanaryStatus:
    """status.lastCanary: how an ended run ended, with only what it still decides on (the version
    not to run again, an alias change still to make, the outcome and its tags' contents)."""
    entry = cast(
        "LastCanaryStatus",
        {key: value for key, value in to_status(run, canary).items() if key in RECORD_KEYS},
    )
    if canary.analysis is not None:
        analysis: LastCanaryAnalysis = {"failures": run.failures}
        if run.verdict is not None:
            analysis["verdict"] = run.verdict.value
        if run.measurements:
            analysis["metrics"] = _metrics(run)
        entry["analysis"] = analysis
    return entry


def to_status(run: CanaryRun, canary: CanarySpec) -> CanaryTrackStatus:
    """The run's fields of status.canary (beside the version, pods and weight the planner adds)."""
    entry: CanaryTrackStatus = {"version": run.version, "phase": run.phase.value}
    if run.model is not None:
        entry["model"] = run.model
    if canary.steps:
        entry |= {"stepIndex": run.step_index, "step": _step_text(run, canary)}
    if run.step_started_at is not None:
        entry["stepStartedAt"] = stamp(run.step_started_at)
    if run.waiting_since is not None and not run.ended:
        entry["waitingSince"] = stamp(run.waiting_since)
    if canary.analysis is not None:
        analysis: CanaryAnalysisStatus = {
            "failures": run.failures,
            "failureLimit": canary.analysis.failure_limit,
        }
        if run.verdict is not None:
            analysis["verdict"] = run.verdict.value
        if run.measured_at is not None:
            analysis["measuredAt"] = stamp(run.measured_at)
        if run.window_start is not None:
            analysis["windowStart"] = stamp(run.window_start)
        if run.read_at is not None and run.read_at != run.measured_at:
            analysis["readAt"] = stamp(run.read_at)  # a later reading that judged nothing
        if run.measurements:
            analysis["metrics"] = _metrics(run)
        entry["analysis"] = analysis
    if run.message:
        entry["message"] = run.message
    if run.ended_at is not None:
        entry["endedAt"] = stamp(run.ended_at)
    if run.promoting_from is not None:
        entry["promotingFrom"] = run.promoting_from
    if run.alias_write is not None:
        entry["aliasWrite"] = run.alias_write.value
    if run.gate is not None:
        entry["gate"] = run.gate.to_status()
    return entry


def _step_text(run: CanaryRun, canary: CanarySpec) -> str:
    """ "2/3": the step a run is at, counted from one (a finished run stays at the last)."""
    return f"{min(run.step_index + 1, len(canary.steps))}/{len(canary.steps)}"


def _metrics(run: CanaryRun) -> list[MetricStatus]:
    # The judge's own to_status shape (analysis.judge.MetricResult), kept as status gave it back.
    return [cast("MetricStatus", dict(metric)) for metric in run.measurements]


# ------------------------------------------------------------------------------------ a pass


def advance(
    *,
    spec: ModelDeploymentSpec,
    previous: CanaryRun | None,
    registry: Registry,
    analysis: AnalysisResult | None,
    now: datetime,
    gates: Gates | None = None,
) -> Advance:
    canary = spec.canary
    if canary is None or not spec.canary_wanted:
        return Advance(run=None)  # no canary asked for: nothing to keep
    model = spec.model.name
    if previous is not None and not previous.of(model):
        previous = None  # another model's run (spec.model.name changed): it says nothing of this one
    if previous is not None and previous.model is None:
        previous = replace(previous, model=model)
    if previous is not None and previous.promoting_from is None and registry.fresh and not previous.ended:
        # A run from a status that did not say where production was: from where it is now.
        previous = replace(previous, promoting_from=registry.production_alias)
    if not registry.fresh:
        # The aliases are the last ones known: the run goes on as it was; none starts or ends.
        return (
            Advance(run=None)
            if previous is None
            else _same_version(spec, canary, previous, registry, analysis, now, gates)
        )
    wanted = registry.canary_alias
    if previous is not None and (wanted is None or wanted == previous.version):
        return _same_version(spec, canary, previous, registry, analysis, now, gates)
    if wanted is None or wanted == registry.production_alias:
        return Advance(run=None)  # no canary alias, or one on production's version: no canary
    # A new version under @canary: its own run from the first step, waiting for its weight (after
    # its holdout gate, with spec.canary.gate).
    first = CanaryRun(
        version=wanted,
        phase=Phase.PROGRESSING,
        model=model,
        waiting_since=now,
        promoting_from=registry.production_alias,
    )
    if canary.gate is not None:
        return _gating(
            spec, canary, replace(first, phase=Phase.GATING, waiting_since=None), registry, gates, now
        )
    return Advance(run=_paused(spec, first))


def _same_version(
    spec: ModelDeploymentSpec,
    canary: CanarySpec,
    run: CanaryRun,
    registry: Registry,
    analysis: AnalysisResult | None,
    now: datetime,
    gates: Gates | None = None,
) -> Advance:
    if run.ended:
        return Advance(run=_removal_settled(canary, run, registry))
    if registry.production_alias == run.version:
        # Promoted, by the operator's own alias move or a human's: the remaining steps are skipped.
        if registry.production_settled == run.version:
            if not canary.watched:
                return Advance(run=None)  # a plain fixed weight keeps no record, as before runs existed
            message = f"production runs version {run.version} on every replica"
            ended = replace(run, phase=Phase.SUCCEEDED, message=message, ended_at=now, waiting_since=None)
            return Advance(run=replace(ended, alias_write=_made(ended.alias_write)))
        message = f"@{spec.model.alias} points at version {run.version}: production is rolling to it"
        return Advance(
            run=replace(
                run,
                phase=Phase.PROMOTING,
                message=message,
                waiting_since=None,
                alias_write=_made(run.alias_write),
            )
        )
    if registry.canary_alias is None and registry.fresh:
        return Advance(run=None)  # @canary was deleted: the canary ends, nothing to record
    if run.phase is Phase.PROMOTING:
        return _promoting(spec, canary, run, registry, now)
    if gate_pending(canary, run):
        return _gating(spec, canary, run, registry, gates, now)
    if run.phase is Phase.GATING:
        run = replace(run, phase=Phase.PROGRESSING, waiting_since=now)  # the gate was removed from the spec
    if spec.suspend:
        return Advance(run=_paused(spec, run))
    if run.phase is Phase.PAUSED:
        run = replace(run, phase=Phase.PROGRESSING, step_started_at=None, message="", waiting_since=now)

    events: list[EventRecord] = []
    run = _conform(spec, canary, run, now)
    run = _measured(canary, run, analysis, events)
    if run.phase is Phase.ABORTED:
        return Advance(run=_aborted(canary, run, now), events=tuple(events))
    run = _next_step(spec, canary, run, registry, now, events)
    run = _deadline(spec, canary, run, now, events)
    if run.phase is Phase.ABORTED:
        return Advance(run=_aborted(canary, run, now), events=tuple(events))
    return Advance(run=run, events=tuple(events))


def _promoting(
    spec: ModelDeploymentSpec, canary: CanarySpec, run: CanaryRun, registry: Registry, now: datetime
) -> Advance:
    """The operator decided to move @production (production does not point at the run's version)."""
    if not registry.fresh:
        return Advance(run=run)  # the aliases are the last ones known: decided when it answers
    if (
        canary.promotion is Promotion.AUTO
        and run.alias_write is AliasWrite.PLANNED
        and registry.production_alias == run.promoting_from
    ):
        return Advance(run=run)  # not made yet: the write re-reads the alias before it moves it
    # A human moved @production (back to where it was, or elsewhere) after or before the operator's
    # move, or the operator cannot tell whether its move was made: theirs stands.
    alias = spec.model.alias
    if run.alias_write is AliasWrite.ATTEMPTED and registry.production_alias == run.promoting_from:
        why = f"the operator could not confirm its move of @{alias} to version {run.version}"
    elif canary.promotion is not Promotion.AUTO and run.alias_write is AliasWrite.PLANNED:
        why = "spec.canary.promotion is manual now"
    elif run.alias_write is None:
        why = f"@{alias} no longer points at version {run.version} (it names {registry.production_alias})"
    else:
        why = f"@{alias} was moved to version {registry.production_alias} while the operator was promoting it"
    message = f"{why}: promotion called off; move @{alias} to version {run.version} to promote it"
    event = EventRecord("Warning", reasons.PROMOTION_CALLED_OFF, f"version {run.version}: {message}")
    called_off = replace(run, phase=Phase.AWAITING_PROMOTION, alias_write=None, message=message)
    return Advance(run=called_off, events=(event,))


def gate_pending(canary: CanarySpec, run: CanaryRun) -> bool:
    """Whether the run must still clear spec.canary.gate before it takes a request. A run is gated
    when it begins under a gate (`run.gate` is set then): a gate added while a version already takes
    requests judges the next version, as an analysis edit does, rather than pull live traffic back."""
    return canary.gate is not None and run.gate is not None and not run.gate.cleared


def _gating(
    spec: ModelDeploymentSpec,
    canary: CanarySpec,
    run: CanaryRun,
    registry: Registry,
    gates: Gates | None,
    now: datetime,
) -> Advance:
    """The run while its holdout gate judges it: a Job per (version, gate settings, production
    version), started once, its verdict taken once it ended. Without a registry answer the baseline
    is not known: the Job in flight goes on and nothing is decided."""
    gate = canary.gate
    assert gate is not None
    if not registry.fresh or gates is None:
        return Advance(run=run)
    baseline = registry.production_alias
    digest = holdout.digest(gate, baseline)
    events: list[EventRecord] = []
    record = run.gate
    if record is None or record.digest != digest or record.verdict is not None:
        name = holdout.job_name(gates.owner, run.version, gate, baseline)
        record = GateRecord(job=name, digest=digest, baseline=baseline)
        against = f"production version {baseline}" if baseline else "its absolute thresholds alone"
        message = f"version {run.version}: holdout gate started (Job {name}), judged against {against}"
        events.append(EventRecord("Normal", reasons.GATE_STARTED, message))
    running = replace(
        run,
        phase=Phase.GATING,
        gate=record,
        waiting_since=None,
        message=f"the holdout gate runs (Job {record.job})",
    )
    job = next((job for job in gates.jobs if job.name == record.job and job.finished), None)
    if job is None:
        return Advance(run=running, events=tuple(events))
    result = holdout.verdict(job.name, job.message, gate=gate, deadline_exceeded=job.deadline_exceeded)
    return _gate_ended(canary, running, result, now, events)


def _gate_ended(
    canary: CanarySpec, run: CanaryRun, result: holdout.GateResult, now: datetime, events: list[EventRecord]
) -> Advance:
    """The gate's verdict: a pass (or any verdict in a dry run) lets the run take its first step; a
    failure, or a gate that could not judge, ends it."""
    assert canary.gate is not None
    assert run.gate is not None
    record = replace(
        run.gate, verdict=result.verdict, reason=result.reason, summary=result.summary(), run_id=result.run_id
    )
    where = f" (MLflow run {result.run_id})" if result.run_id else ""
    if result.verdict is holdout.Verdict.PASSED:
        text = f"version {run.version} passed the holdout gate: {result.describe()}{where}"
        events.append(EventRecord("Normal", reasons.GATE_PASSED, text))
        cleared = replace(record, cleared=True)
        return Advance(
            run=replace(run, phase=Phase.PROGRESSING, gate=cleared, waiting_since=now, message=""),
            events=tuple(events),
        )
    failed = result.verdict is holdout.Verdict.FAILED
    what = "failed the holdout gate" if failed else "was not judged: the holdout gate could not judge it"
    reason = reasons.GATE_FAILED if failed else reasons.GATE_ERROR
    text = f"version {run.version} {what}: {result.describe()}{where}"
    if canary.gate.dry_run:
        events.append(EventRecord("Warning", reason, f"{text} (spec.canary.gate.dryRun: the canary goes on)"))
        cleared = replace(record, cleared=True)
        return Advance(
            run=replace(run, phase=Phase.PROGRESSING, gate=cleared, waiting_since=now, message=""),
            events=tuple(events),
        )
    events.append(EventRecord("Warning", reason, text))
    aborted = replace(run, phase=Phase.ABORTED, gate=record, message=f"aborted: {what}: {result.describe()}")
    return Advance(run=_aborted(canary, aborted, now), events=tuple(events))


def _removal_settled(canary: CanarySpec, run: CanaryRun, registry: Registry) -> CanaryRun:
    """An aborted run whose @canary removal is pending: done once the alias no longer names it."""
    pending = run.alias_write in (AliasWrite.PLANNED, AliasWrite.ATTEMPTED)
    if run.phase is Phase.ABORTED and pending and registry.fresh and registry.canary_alias != run.version:
        return replace(run, alias_write=AliasWrite.MADE)
    return run


def _aborted(canary: CanarySpec, run: CanaryRun, now: datetime) -> CanaryRun:
    removal = AliasWrite.PLANNED if canary.on_abort is OnAbort.REMOVE_ALIAS else None
    return replace(run, ended_at=now, waiting_since=None, alias_write=removal, promoting_from=None)


def _made(write: AliasWrite | None) -> AliasWrite | None:
    """Production points at the run's version: an intended move is done (by whoever made it)."""
    return AliasWrite.MADE if write is not None else None


def _paused(spec: ModelDeploymentSpec, run: CanaryRun) -> CanaryRun:
    # A run awaiting promotion already waits for a human, and may be there because a human called
    # the operator's promotion off: pausing it, then resuming at its step, would promote it again.
    if not spec.suspend or run.phase is Phase.AWAITING_PROMOTION:
        return run
    return replace(
        run,
        phase=Phase.PAUSED,
        waiting_since=None,
        message="spec.suspend is true: the canary holds its step",
    )


def _conform(spec: ModelDeploymentSpec, canary: CanarySpec, run: CanaryRun, now: datetime) -> CanaryRun:
    """The run as the spec in force has it: steps added, removed, shortened or lengthened, an analysis
    added or removed, promotion switched. The step index, its start and the verdicts stay; the phase
    is what they mean under this spec."""
    if not canary.steps:
        # A fixed weight: at it (once in place) until a human promotes. `step_started_at` says since
        # when the weight is in place; one carried over from steps no longer holds.
        if run.phase is Phase.AWAITING_PROMOTION and run.step_index == 0:
            return run
        return replace(
            run,
            phase=Phase.PROGRESSING,
            step_index=0,
            step_started_at=None,
            waiting_since=run.waiting_since or now,
        )
    if run.phase is Phase.AWAITING_PROMOTION and run.step_index < len(canary.steps):
        # Steps lengthened past the ones every one of which passed, or a fixed weight turned into
        # steps: the run resumes at its step, whose weight is not in place yet.
        run = replace(run, step_started_at=None, waiting_since=None)
    if run.step_index >= len(canary.steps):
        # Every step of the spec in force passed (it may have been shortened below the step the run
        # was at): as when the last one passes.
        if run.phase is Phase.AWAITING_PROMOTION:
            return run
        return replace(run, phase=Phase.PROGRESSING, step_started_at=None)  # _next_step decides
    if run.step_started_at is None:
        return replace(run, phase=Phase.PROGRESSING, waiting_since=run.waiting_since or now)
    # A step that started: measured when there is an analysis, timed alone when not.
    phase = Phase.ANALYZING if canary.analysis is not None else Phase.PROGRESSING
    return replace(run, phase=phase)


def _measured(
    canary: CanarySpec, run: CanaryRun, result: AnalysisResult | None, events: list[EventRecord]
) -> CanaryRun:
    if canary.analysis is None or result is None or result.version != run.version:
        return run
    if run.phase not in MEASURED:
        return run
    run = replace(run, read_at=result.measured_at)
    # Awaiting promotion, the canary is still watched (a failure aborts it), but the run's message
    # stays what a human must do; the measurement is in the run's analysis.
    awaiting = run.phase is Phase.AWAITING_PROMOTION
    if result.error is not None:
        if awaiting:
            return run
        return replace(
            run, message=f"the analysis could not read metrics (not counted as a failure): {result.error}"
        )
    measurement = result.measurement
    if measurement is None:
        if awaiting:
            return run
        return replace(run, message="baseline taken; the first measurement follows in one interval")
    before = run.verdict
    window_start = result.window_start or result.measured_at - timedelta(
        seconds=canary.analysis.interval_seconds
    )
    run = replace(
        run,
        verdict=measurement.verdict,
        measured_at=result.measured_at,
        window_start=window_start,
        measurements=tuple(measurement.to_status().get("metrics", ())),
        message=run.message if awaiting else measurement.message,
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
    """Moves past a step whose time is up and whose analysis passed in it; after the last, promotes
    (auto) or waits for a human."""
    if not canary.steps or run.phase not in (Phase.PROGRESSING, Phase.ANALYZING):
        return run
    if run.step_index < len(canary.steps):
        if run.step_started_at is None:
            return run
        step = canary.steps[run.step_index]
        ends = run.step_started_at + timedelta(seconds=step.duration_seconds)
        if now < ends:
            return run
        if canary.analysis is not None and not passed_in_step(run):
            held = replace(run, waiting_since=run.waiting_since or ends)
            if run.message.startswith(HOLDING):
                return held  # said since the last reading; the next one may change it
            return replace(held, message=f"{HOLDING} {run.step_index + 1}: {_holding(run)}")
        following = run.step_index + 1
        run = replace(
            run,
            step_index=following,
            step_started_at=None,
            phase=Phase.PROGRESSING,
            message="",
            waiting_since=now,
        )
        if following < len(canary.steps):
            return run
    alias = spec.model.alias
    if canary.promotion is Promotion.AUTO:
        if registry.production_alias is None:
            return run  # nothing known to move it from (never served): the next answer decides
        if run.promoting_from is not None and registry.production_alias == run.promoting_from:
            message = f"every step passed: moving @{alias} to version {run.version} in MLflow"
            events.append(EventRecord("Normal", reasons.CANARY_PROMOTING, message))
            return replace(
                run,
                phase=Phase.PROMOTING,
                message=message,
                alias_write=AliasWrite.PLANNED,
                waiting_since=None,
            )
        # A human moved @production during the run: theirs stands; promoting is theirs too now.
        message = (
            f"every step passed, but @{alias} was moved from version {run.promoting_from} to "
            f"{registry.production_alias} during the run: move @{alias} to version {run.version} "
            "to promote it"
        )
        events.append(EventRecord("Normal", reasons.AWAITING_PROMOTION, message))
        return replace(run, phase=Phase.AWAITING_PROMOTION, message=message, waiting_since=None)
    message = f"every step passed: move @{alias} to version {run.version} to promote it"
    events.append(EventRecord("Normal", reasons.AWAITING_PROMOTION, message))
    return replace(run, phase=Phase.AWAITING_PROMOTION, message=message, waiting_since=None)


def passed_in_step(run: CanaryRun) -> bool:
    """The last judged measurement passed, and the whole window it judged lies within the step: one
    that reaches back before the step began mostly judged the step before it."""
    return run.verdict is Verdict.PASSED and _judged_in_step(run)


def _judged_in_step(run: CanaryRun) -> bool:
    return (
        run.window_start is not None
        and run.step_started_at is not None
        and run.window_start >= run.step_started_at
    )


def _holding(run: CanaryRun) -> str:
    """Why a step whose time is up has not passed, in the user's terms."""
    if run.verdict is Verdict.FAILED and _judged_in_step(run):
        return f"the last measurement failed ({run.failures} so far); it holds for a passing one"
    if run.verdict is Verdict.INCONCLUSIVE and _judged_in_step(run):
        return f"waiting for a conclusive measurement ({run.message})"
    if run.message.startswith("the analysis could not read metrics"):
        return f"waiting for a measurement: {run.message}"
    return "waiting for a passing measurement taken wholly within this step"


def _deadline(
    spec: ModelDeploymentSpec, canary: CanarySpec, run: CanaryRun, now: datetime, events: list[EventRecord]
) -> CanaryRun:
    """Aborts a run that waited longer than spec.canary.progressDeadline for what it needs."""
    deadline = canary.progress_deadline_seconds
    if not deadline or run.phase not in DEADLINED or run.waiting_since is None:
        return run
    if now < run.waiting_since + timedelta(seconds=deadline):
        return run
    needed = run.message or "its weight in place"
    message = (
        f"aborted: no progress for {_duration(deadline)} (spec.canary.progressDeadline), "
        f"waiting since {stamp(run.waiting_since)}: {needed}"
    )
    events.append(EventRecord("Warning", reasons.CANARY_ABORTED, f"version {run.version} {message}"))
    return replace(run, phase=Phase.ABORTED, message=message)


# ------------------------------------------------------------------------------------ the rest of a pass


def weight(spec: ModelDeploymentSpec, run: CanaryRun | None) -> int:
    """The share of requests to ask for the canary now (0: no canary workload)."""
    canary = spec.canary
    if canary is None or run is None or run.ended or run.phase is Phase.GATING or gate_pending(canary, run):
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
        return Advance(
            run=replace(
                run, phase=Phase.AWAITING_PROMOTION, step_started_at=now, message=message, waiting_since=None
            )
        )
    if run.step_started_at is not None or run.step_index >= len(canary.steps):
        return Advance(run=run)
    phase = Phase.ANALYZING if canary.analysis is not None else Phase.PROGRESSING
    step = canary.steps[run.step_index]
    message = f"step {run.step_index + 1}/{len(canary.steps)} for {_duration(step.duration_seconds)}"
    event = EventRecord("Normal", reasons.CANARY_STEP, f"version {run.version} {message}: {share}")
    started = replace(run, phase=phase, step_started_at=now, message=message, waiting_since=None)
    return Advance(run=started, events=(event,))


def measurement_due(spec: ModelDeploymentSpec, run: CanaryRun | None, now: datetime) -> bool:
    """Whether this pass measures: an analysed run at its weight, one interval after the last reading."""
    canary = spec.canary
    if canary is None or canary.analysis is None or run is None or run.phase not in MEASURED or spec.suspend:
        return False
    return run.read_at is None or now >= run.read_at + timedelta(seconds=canary.analysis.interval_seconds)


def next_pass_in(spec: ModelDeploymentSpec, run: CanaryRun | None, now: datetime) -> float | None:
    """Seconds until the run's next own event: a reading due (0 when one is due already: this pass
    could not take it, its step's weight was put in place after the pass began; taking it moves the
    next one an interval on), a step's end or the progress deadline still ahead (one already past
    was acted on by this pass: a step that holds is not passed again before its next reading)."""
    canary = spec.canary
    if canary is None or run is None or run.ended or spec.suspend:
        return None
    due: list[float] = []
    if canary.analysis is not None and run.phase in MEASURED:
        reading = (run.read_at or now) + timedelta(seconds=canary.analysis.interval_seconds)
        due.append(max(0.0, (reading - now).total_seconds()))
    later: list[datetime] = []
    if canary.steps and run.step_started_at is not None and run.step_index < len(canary.steps):
        later.append(run.step_started_at + timedelta(seconds=canary.steps[run.step_index].duration_seconds))
    if canary.progress_deadline_seconds and run.phase in DEADLINED and run.waiting_since is not None:
        later.append(run.waiting_since + timedelta(seconds=canary.progress_deadline_seconds))
    due += [(moment - now).total_seconds() for moment in later if moment > now]
    return min(due) if due else None


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


def _alias_write(text: object) -> AliasWrite | None:
    try:
        return AliasWrite(str(text)) if text else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
