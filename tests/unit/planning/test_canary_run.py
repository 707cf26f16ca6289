"""The watched canary's decisions, as named tables: every phase transition, inconclusive and failed
measurements, the failure limit, promotion (by the operator and by a human), abort and its record,
suspend, and a restart in each phase (status round trip)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aliasroll import reasons
from aliasroll.analysis.judge import Measurement, MetricResult, Verdict
from aliasroll.planning import canary, registry_writes
from aliasroll.planning.canary import AnalysisResult, CanaryRun, Phase, Registry
from aliasroll.planning.registry_writes import AliasChange, TagVersion
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1", generation=1)
STEPS = [{"weight": 5, "duration": "1m"}, {"weight": 25, "duration": "1m"}, {"weight": 50, "duration": "1m"}]
ANALYSIS = {"interval": "10s", "minRequests": 20, "failureLimit": 2, "errorRate": {"maxPercent": 1}}


def spec(**canary_fields: Any) -> ModelDeploymentSpec:
    fields: dict[str, Any] = {"alias": "canary", "steps": STEPS, "analysis": ANALYSIS} | canary_fields
    fields = {key: value for key, value in fields.items() if value is not None}
    return parse_spec(
        {
            "model": {"name": "sentiment"},
            "registry": {"trackingUri": "http://mlflow:5000"},
            "replicas": 10,
            "canary": fields,
        }
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def registry(
    canary_alias: str | None = "3", production: str | None = "2", settled: str | None = "2"
) -> Registry:
    return Registry(canary_alias=canary_alias, production_alias=production, production_settled=settled)


def measured(verdict: Verdict, when: float, version: str = "3") -> AnalysisResult:
    metric = MetricResult(
        metric="errorRate",
        canary=0.0 if verdict is Verdict.PASSED else 12.5,
        production=0.0,
        bound=1.0,
        bound_kind="absolute",
        verdict=verdict,
        message=f"error rate {verdict}",
    )
    measurement = Measurement(
        verdict=verdict,
        metrics=() if verdict is Verdict.INCONCLUSIVE else (metric,),
        canary_requests=5 if verdict is Verdict.INCONCLUSIVE else 300,
        production_requests=3000,
        message="too little canary traffic" if verdict is Verdict.INCONCLUSIVE else f"error rate {verdict}",
    )
    return AnalysisResult(version=version, measured_at=at(when), measurement=measurement)


def analysing(step: int = 0, started: float = 0, **fields: Any) -> CanaryRun:
    return CanaryRun(
        version="3",
        phase=Phase.ANALYZING,
        model="sentiment",
        step_index=step,
        step_started_at=at(started),
        promoting_from=fields.pop("promoting_from", "2"),
        **fields,
    )


def advance(
    run: CanaryRun | None, now: float, *, the_spec: ModelDeploymentSpec | None = None, **kw: Any
) -> canary.Advance:
    return canary.advance(
        spec=the_spec or spec(),
        previous=run,
        registry=kw.pop("registry", registry()),
        analysis=kw.pop("analysis", None),
        now=at(now),
    )


def reasons_of(result: canary.Advance) -> list[str]:
    return [event.reason for event in result.events]


# --- a new version, and its first step ---------------------------------------------------------


def test_a_new_canary_version_starts_at_the_first_step() -> None:
    result = advance(None, 0)
    assert result.run == CanaryRun(
        version="3", phase=Phase.PROGRESSING, model="sentiment", waiting_since=at(0), promoting_from="2"
    )
    assert canary.weight(spec(), result.run) == 5


def test_the_step_clock_starts_once_its_weight_is_in_place() -> None:
    waiting = CanaryRun(version="3", phase=Phase.PROGRESSING)
    not_yet = canary.settle(spec(), waiting, in_place=False, share="0% of requests", now=at(5))
    assert not_yet.run == waiting
    assert not_yet.events == ()
    shown = "25% of requests (5% requested; 1 of 4 ready pods run the canary)"
    started = canary.settle(spec(), waiting, in_place=True, share=shown, now=at(7))
    assert started.run is not None
    assert started.run.phase is Phase.ANALYZING
    assert started.run.step_started_at == at(7)
    assert [e.reason for e in started.events] == [reasons.CANARY_STEP]
    # The event states the share in place (and the one asked); status's message, which outlives
    # the pass, states none.
    assert started.events[0].message == f"version 3 step 1/3 for 1m: {shown}"
    assert started.run.message == "step 1/3 for 1m"


def test_a_canary_on_production_s_version_is_no_canary() -> None:
    assert advance(None, 0, registry=registry(canary_alias="2")).run is None


# --- steps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "run", "now", "analysis", "step", "phase"),
    [
        (
            "time not up, passed: the step goes on",
            analysing(),
            30,
            measured(Verdict.PASSED, 30),
            0,
            Phase.ANALYZING,
        ),
        (
            "time up, passed in the step: next step",
            analysing(),
            60,
            measured(Verdict.PASSED, 60),
            1,
            Phase.PROGRESSING,
        ),
        (
            "time up, passed earlier in the step: next step",
            analysing(verdict=Verdict.PASSED, measured_at=at(50), window_start=at(40)),
            61,
            None,
            1,
            Phase.PROGRESSING,
        ),
        (
            "time up, the last pass was before the step: holds",
            analysing(started=100, verdict=Verdict.PASSED, measured_at=at(95), window_start=at(85)),
            161,
            None,
            0,
            Phase.ANALYZING,
        ),
        (
            "time up, inconclusive: holds",
            analysing(),
            60,
            measured(Verdict.INCONCLUSIVE, 60),
            0,
            Phase.ANALYZING,
        ),
        ("time up, failed once: holds", analysing(), 60, measured(Verdict.FAILED, 60), 0, Phase.ANALYZING),
    ],
)
def test_steps(
    name: str, run: CanaryRun, now: float, analysis: AnalysisResult | None, step: int, phase: Phase
) -> None:
    result = advance(run, now, analysis=analysis)
    assert result.run is not None
    assert (result.run.step_index, result.run.phase) == (step, phase), name


def test_steps_without_analysis_pass_on_time_alone() -> None:
    no_analysis = spec(analysis=None)
    run = CanaryRun(
        version="3", phase=Phase.PROGRESSING, model="sentiment", step_started_at=at(0), promoting_from="2"
    )
    assert advance(run, 59, the_spec=no_analysis).run == run
    moved = advance(run, 60, the_spec=no_analysis).run
    assert moved is not None
    assert (moved.step_index, moved.step_started_at) == (1, None)
    assert canary.weight(no_analysis, moved) == 25


def test_inconclusive_is_told_once_and_never_fails_or_promotes() -> None:
    first = advance(analysing(step=2), 60, analysis=measured(Verdict.INCONCLUSIVE, 60))
    assert reasons_of(first) == [reasons.ANALYSIS_INCONCLUSIVE]
    assert first.run is not None
    again = advance(first.run, 70, analysis=measured(Verdict.INCONCLUSIVE, 70))
    assert again.events == ()
    assert again.run is not None
    assert (again.run.phase, again.run.failures, again.run.step_index) == (Phase.ANALYZING, 0, 2)
    assert again.run.message.startswith("holding step 3")


# --- failures and abort -------------------------------------------------------------------------


def test_failures_count_to_the_limit_then_abort() -> None:
    once = advance(analysing(), 10, analysis=measured(Verdict.FAILED, 10))
    assert reasons_of(once) == [reasons.ANALYSIS_FAILED]
    assert once.run is not None
    assert (once.run.phase, once.run.failures) == (Phase.ANALYZING, 1)
    twice = advance(once.run, 20, analysis=measured(Verdict.FAILED, 20))
    assert reasons_of(twice) == [reasons.CANARY_ABORTED]
    aborted = twice.run
    assert aborted is not None
    assert (aborted.phase, aborted.failures, aborted.ended_at) == (Phase.ABORTED, 2, at(20))
    assert "error rate Failed" in twice.events[0].message
    assert canary.weight(spec(), aborted) == 0


def test_an_aborted_version_is_not_retried_until_the_alias_moves() -> None:
    aborted = CanaryRun(version="3", phase=Phase.ABORTED, model="sentiment", failures=2, ended_at=at(20))
    assert advance(aborted, 500).run == aborted
    assert advance(aborted, 500, registry=registry(canary_alias=None)).run == aborted
    fresh = advance(aborted, 500, registry=registry(canary_alias="4")).run
    assert fresh == CanaryRun(
        version="4", phase=Phase.PROGRESSING, model="sentiment", waiting_since=at(500), promoting_from="2"
    )


def test_a_metrics_source_that_cannot_be_read_is_never_a_failure() -> None:
    broken = AnalysisResult(version="3", measured_at=at(10), error="no serving pod answered /metrics")
    result = advance(analysing(), 10, analysis=broken)
    assert result.run is not None
    assert (result.run.failures, result.run.verdict, result.run.measured_at) == (0, None, None)
    assert result.run.read_at == at(10), "read, so the next reading is an interval away"
    assert "could not read metrics" in result.run.message


def test_a_baseline_is_no_verdict() -> None:
    result = advance(analysing(), 0, analysis=AnalysisResult(version="3", measured_at=at(0)))
    assert result.run is not None
    assert (result.run.verdict, result.run.measured_at, result.run.read_at) == (None, None, at(0))


def test_a_measurement_of_another_version_is_ignored() -> None:
    result = advance(analysing(), 10, analysis=measured(Verdict.FAILED, 10, version="9"))
    assert result.run == analysing()


# --- promotion ----------------------------------------------------------------------------------


def test_auto_promotion_after_the_last_step_moves_the_production_alias() -> None:
    auto = spec(promotion="auto")
    last = analysing(step=2)
    result = advance(last, 60, the_spec=auto, analysis=measured(Verdict.PASSED, 60))
    run = result.run
    assert run is not None
    assert (run.phase, run.promoting_from) == (Phase.PROMOTING, "2")
    assert reasons_of(result) == [reasons.CANARY_PROMOTING]
    writes = registry_writes.canary_writes(owner=OWNER, spec=auto, run=run, registry=registry())
    assert writes[0] == AliasChange("3", "production", expect="2", to="3", event=writes[0].event)
    assert canary.weight(auto, run) == 50, "the canary keeps its last weight until production rolls"
    # The registry shows the move: production rolls; once it runs the version everywhere, Succeeded.
    rolling = advance(run, 61, the_spec=auto, registry=registry(production="3", settled=None)).run
    assert rolling is not None
    assert rolling.phase is Phase.PROMOTING
    assert (
        registry_writes.canary_writes(owner=OWNER, spec=auto, run=rolling, registry=registry(production="3"))
        == []
    )
    done = advance(rolling, 90, the_spec=auto, registry=registry(production="3", settled="3")).run
    assert done is not None
    assert (done.phase, done.ended_at) == (Phase.SUCCEEDED, at(90))


def test_manual_promotion_waits_after_the_last_step() -> None:
    result = advance(analysing(step=2), 60, analysis=measured(Verdict.PASSED, 60))
    assert result.run is not None
    assert result.run.phase is Phase.AWAITING_PROMOTION
    assert reasons_of(result) == [reasons.AWAITING_PROMOTION]
    assert registry_writes.canary_writes(owner=OWNER, spec=spec(), run=result.run, registry=registry()) == []


def test_a_human_moving_production_promotes_at_once_skipping_the_steps() -> None:
    result = advance(analysing(step=0), 5, registry=registry(canary_alias=None, production="3", settled="2"))
    assert result.run is not None
    assert result.run.phase is Phase.PROMOTING
    assert result.run.alias_write is None, "nothing for the operator to move"
    done = advance(result.run, 30, registry=registry(canary_alias=None, production="3", settled="3"))
    assert done.run is not None
    assert done.run.phase is Phase.SUCCEEDED


def test_a_human_move_during_the_operator_s_promotion_wins() -> None:
    promoting = replace(analysing(step=3), phase=Phase.PROMOTING, promoting_from="2")
    result = advance(promoting, 70, the_spec=spec(promotion="auto"), registry=registry(production="1"))
    assert result.run is not None
    assert result.run.phase is Phase.AWAITING_PROMOTION
    assert reasons_of(result) == [reasons.PROMOTION_CALLED_OFF]
    assert (
        registry_writes.canary_writes(
            owner=OWNER, spec=spec(promotion="auto"), run=result.run, registry=registry(production="1")
        )
        == []
    )


def test_deleting_the_canary_alias_ends_the_canary() -> None:
    assert advance(analysing(), 10, registry=registry(canary_alias=None)).run is None


# --- suspend ------------------------------------------------------------------------------------


def test_suspend_pauses_and_resume_restarts_the_step_clock() -> None:
    suspended = parse_spec({**_raw(), "suspend": True})
    paused = advance(analysing(step=1, started=0), 30, the_spec=suspended).run
    assert paused is not None
    assert paused.phase is Phase.PAUSED
    assert canary.weight(suspended, paused) == 25
    assert not canary.measurement_due(suspended, paused, at(100))
    resumed = advance(paused, 200).run
    assert resumed is not None
    assert (resumed.phase, resumed.step_index, resumed.step_started_at) == (Phase.PROGRESSING, 1, None)


def _raw() -> dict[str, Any]:
    return {
        "model": {"name": "sentiment"},
        "registry": {"trackingUri": "http://mlflow:5000"},
        "replicas": 10,
        "canary": {"alias": "canary", "steps": STEPS, "analysis": ANALYSIS},
    }


# --- abort policy and records in MLflow ------------------------------------------------------------


def test_remove_alias_on_abort_only_while_it_names_the_aborted_version() -> None:
    remove = spec(onAbort="removeAlias")
    aborted = CanaryRun(
        version="3",
        phase=Phase.ABORTED,
        ended_at=at(20),
        message="aborted: error rate",
        alias_write=canary.AliasWrite.PLANNED,
    )
    writes = registry_writes.canary_writes(owner=OWNER, spec=remove, run=aborted, registry=registry())
    assert [type(w) for w in writes] == [AliasChange, TagVersion]
    moved = registry_writes.canary_writes(
        owner=OWNER, spec=remove, run=aborted, registry=registry(canary_alias="4")
    )
    assert [type(w) for w in moved] == [TagVersion]
    kept = registry_writes.canary_writes(owner=OWNER, spec=spec(), run=aborted, registry=registry())
    assert [type(w) for w in kept] == [TagVersion]


def test_an_ended_run_is_tagged_with_its_outcome() -> None:
    ended = CanaryRun(
        version="3",
        phase=Phase.ABORTED,
        ended_at=at(20),
        message="aborted after 2 failed measurement(s)",
        measurements=(
            {"metric": "errorRate", "canary": 12.5, "production": 0.0, "bound": 1.0, "verdict": "Failed"},
        ),
    )
    (tags,) = registry_writes.canary_writes(owner=OWNER, spec=spec(), run=ended, registry=registry())
    assert isinstance(tags, TagVersion)
    assert tags.version == "3"
    assert tags.tags["aliasroll.io/canary.outcome"] == "aborted"
    assert tags.tags["aliasroll.io/canary.deployment"] == "ml/sentiment"
    assert tags.tags["aliasroll.io/canary.time"] == "2026-11-25T10:00:20Z"
    assert (
        tags.tags["aliasroll.io/canary.analysis.errorRate"]
        == "canary=12.5 production=0.0 bound=1.0 verdict=Failed"
    )


SERVED = "aliasroll.io/served/ml/sentiment/production"


def test_every_span_of_history_is_a_tag_without_colons_in_its_key() -> None:
    history = [
        {
            "track": "production",
            "model": "sentiment",
            "version": "1",
            "from": "2026-11-25T09:00:00Z",
            "to": "2026-11-25T10:00:00Z",
        },
        {"track": "production", "model": "sentiment", "version": "2", "from": "2026-11-25T10:00:00Z"},
        {"track": "production", "model": "other-model", "version": "7", "from": "2026-11-25T08:00:00Z"},
    ]
    writes = registry_writes.served_tags(owner=OWNER, spec=spec(), history=history)
    assert writes == [
        TagVersion(
            "1",
            {f"{SERVED}/20261125T090000Z": "2026-11-25T09:00:00Z to 2026-11-25T10:00:00Z"},
        ),
        TagVersion(
            "2",
            {f"{SERVED}/20261125T100000Z": "2026-11-25T10:00:00Z to now (serving)"},
        ),
    ]


# --- timing -------------------------------------------------------------------------------------


def test_measurements_are_due_once_an_interval_at_the_step_s_weight() -> None:
    the_spec = spec()
    assert not canary.measurement_due(the_spec, CanaryRun(version="3", phase=Phase.PROGRESSING), at(0))
    assert canary.measurement_due(the_spec, analysing(), at(0)), "the first one (a baseline) at once"
    taken = analysing(read_at=at(0))
    assert not canary.measurement_due(the_spec, taken, at(9))
    assert canary.measurement_due(the_spec, taken, at(10))


def test_the_next_pass_comes_when_a_measurement_or_the_step_end_is_due() -> None:
    assert canary.next_pass_in(spec(), analysing(read_at=at(55)), at(56)) == 4.0  # step ends at 60
    assert canary.next_pass_in(spec(), analysing(read_at=at(20)), at(21)) == 9.0  # measurement at 30
    assert canary.next_pass_in(spec(), CanaryRun(version="3", phase=Phase.ABORTED), at(0)) is None


def test_a_fixed_weight_serves_until_a_human_promotes() -> None:
    fixed = spec(steps=None, weight=20, analysis=None)
    run = advance(None, 0, the_spec=fixed).run
    assert canary.weight(fixed, run) == 20
    settled = canary.settle(fixed, run, in_place=True, share="20% of requests", now=at(5)).run
    assert settled is not None
    assert settled.phase is Phase.AWAITING_PROMOTION


# --- restart: status keeps everything a run decides on ----------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        CanaryRun(
            version="3", phase=Phase.PROGRESSING, model="sentiment", waiting_since=at(0), promoting_from="2"
        ),
        analysing(
            step=1,
            started=30,
            failures=1,
            verdict=Verdict.FAILED,
            measured_at=at(40),
            window_start=at(30),
            read_at=at(40),
            message="x",
        ),
        replace(analysing(step=1), phase=Phase.PAUSED, message="paused"),
        replace(
            analysing(step=3),
            phase=Phase.AWAITING_PROMOTION,
            verdict=Verdict.PASSED,
            measured_at=at(70),
            window_start=at(60),
            read_at=at(70),
        ),
        replace(
            analysing(step=3),
            phase=Phase.PROMOTING,
            promoting_from="2",
            alias_write=canary.AliasWrite.PLANNED,
        ),
        CanaryRun(
            version="3",
            phase=Phase.ABORTED,
            model="sentiment",
            failures=2,
            ended_at=at(20),
            message="aborted",
        ),
        CanaryRun(version="3", phase=Phase.SUCCEEDED, model="sentiment", step_index=3, ended_at=at(90)),
    ],
    ids=lambda run: run.phase.value,
)
def test_a_restarted_operator_resumes_every_phase_from_status(run: CanaryRun) -> None:
    entry = canary.to_status(run, spec().canary)  # type: ignore[arg-type]
    assert canary.from_status(entry) == run
    # ...and decides the same, posting nothing twice.
    again = advance(canary.from_status(entry), 45)
    assert advance(run, 45) == again


ENDED = [
    CanaryRun(
        version="3",
        phase=Phase.ABORTED,
        model="sentiment",
        step_index=1,
        failures=2,
        verdict=Verdict.FAILED,
        measured_at=at(40),
        read_at=at(40),
        measurements=({"metric": "errorRate", "verdict": "Failed", "canary": 12.5, "bound": 1.0},),
        message="aborted after 2 failed measurement(s)",
        ended_at=at(40),
    ),
    CanaryRun(
        version="3",
        phase=Phase.SUCCEEDED,
        model="sentiment",
        step_index=3,
        verdict=Verdict.PASSED,
        ended_at=at(90),
        message="production runs version 3 on every replica",
        promoting_from="2",
    ),
]


@pytest.mark.parametrize("run", ENDED, ids=lambda run: run.phase.value)
def test_an_ended_run_is_kept_in_last_canary_with_what_it_still_decides_on(run: CanaryRun) -> None:
    record = canary.to_record(run, spec().canary)  # type: ignore[arg-type]
    assert set(record) == {"model", "version", "phase", "step", "message", "endedAt", "analysis"}
    assert record["step"] == ("2/3" if run.phase is Phase.ABORTED else "3/3")
    # Its pods are gone: status names no canary track, and the record alone is the run.
    kept = canary.recorded_run({"lastCanary": record})
    assert kept is not None
    assert (kept.version, kept.phase, kept.ended_at, kept.message) == (
        run.version,
        run.phase,
        run.ended_at,
        run.message,
    )
    assert kept.measurements == run.measurements, "the outcome tags can still be written after a restart"
    assert canary.to_record(kept, spec().canary) == record, "written again unchanged, pass after pass"
    # The same version stays ended (not tried again) until @canary moves.
    assert advance(kept, 200).run == kept
    # While its pods drain, status.canary says only its phase: the record decides.
    draining = {"canary": {"version": "3", "phase": run.phase.value, "replicas": 2}, "lastCanary": record}
    assert canary.recorded_run(draining) == kept


def test_a_status_written_before_last_canary_existed_is_read_as_it_was() -> None:
    """An older operator kept the ended run's whole record in status.canary (no pods)."""
    old = ENDED[0]
    entry = canary.to_status(old, spec().canary) | {"replicas": 0, "weight": 0}  # type: ignore[arg-type]
    assert canary.recorded_run({"canary": entry}) == old


def test_a_running_canary_is_read_from_status_canary_beside_an_older_record() -> None:
    running = analysing(step=1, started=30)
    status = {
        "canary": canary.to_status(running, spec().canary),  # type: ignore[arg-type]
        "lastCanary": canary.to_record(ENDED[0], spec().canary),  # type: ignore[arg-type]
    }
    assert canary.recorded_run(status) == running


def test_a_plain_fixed_weight_keeps_no_record_once_promoted() -> None:
    fixed = spec(steps=None, weight=20, analysis=None)
    waiting = CanaryRun(version="3", phase=Phase.AWAITING_PROMOTION)
    promoted = registry(canary_alias=None, production="3", settled="3")
    assert advance(waiting, 10, the_spec=fixed, registry=promoted).run is None
