"""planning/bake.py rule by rule: a table of cases keyed by sentences (the planner's passes over a
cluster are in test_bake_planner.py, random histories in test_version_mode_model.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from builders import OWNER, spec

from aliasroll import reasons
from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.window import Window
from aliasroll.planning import bake as bake_run
from aliasroll.planning.bake import Bake, Moment, Phase
from aliasroll.planning.canary import AliasWrite, AnalysisResult
from aliasroll.planning.registry_writes import AliasChange, TagVersion, bake_writes
from aliasroll.spec import AnalysisSpec, BakeSpec, ModelDeploymentSpec, RollbackSpec

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
RULES = AnalysisSpec(interval_seconds=30, min_requests=20, failure_limit=2, max_error_percent=1.0)
SPEC = replace(
    spec(replicas=3),
    rollback=RollbackSpec(window_seconds=1800, bake=BakeSpec(duration_seconds=600, analysis=RULES)),
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def moment(
    *,
    production: str = "2",
    before: str | None = "2",
    alias: str | None = "2",
    fresh: bool = True,
    warm_before: frozenset[str] = frozenset({"1"}),
    warm: dict[str, bool] | None = None,
) -> Moment:
    return Moment(
        now=NOW,
        production=production,
        production_before=before,
        alias=alias if fresh else None,  # None and fresh: @production was removed
        fresh=fresh,
        warm_before=warm_before,
        warm={"1": False} if warm is None else warm,
    )


def reading(
    version: str = "2", *, errors: int = 0, requests: int = 100, at: datetime = NOW
) -> AnalysisResult:
    limits = Limits(min_canary_requests=20, max_error_percent=1.0)
    measured = judge(limits, canary=Window(requests=requests, errors=errors), production=Window())
    return AnalysisResult(version=version, measured_at=at, measurement=measured)


BAKING = Bake(version="2", previous="1", phase=Phase.BAKING, model="sentiment", started_at=ago(60))
ONE_FAILURE = replace(BAKING, failures=1, read_at=ago(30), measured_at=ago(30))
FAILED = replace(
    ONE_FAILURE,
    phase=Phase.FAILED,
    failures=2,
    ended_at=ago(5),
    alias_write=AliasWrite.PLANNED,
    message="failed",
)


@dataclass(frozen=True)
class Case:
    previous: Bake | None
    moment: Moment
    analysis: AnalysisResult | None = None
    phase: Phase | None = None  # None: no bake after the pass
    version: str | None = "2"
    failures: int | None = None
    alias_write: AliasWrite | None = None
    events: tuple[str, ...] = ()
    change: tuple[str, str] | None = None  # (expect, to) of the alias change planned
    outcome: str | None = None  # the outcome tag written
    started: bool | None = None
    the_spec: ModelDeploymentSpec = field(default=SPEC)


CASES: dict[str, Case] = {
    "a move forward from a version that stays warm starts a bake, its clock not yet running": Case(
        None,
        moment(before="1", warm={"1": True}, warm_before=frozenset()),
        phase=Phase.BAKING,
        events=(reasons.BAKE_STARTED,),
        started=False,
    ),
    "a first deploy starts no bake": Case(None, moment(before=None, warm={}, warm_before=frozenset())),
    "a move whose version left is not kept warm (window 0) starts no bake": Case(
        None, moment(before="1", warm={}, warm_before=frozenset()), phase=None
    ),
    "a move back to a warm version (a rollback) starts no bake": Case(
        None, moment(production="1", before="2", alias="1", warm={"2": True}), phase=None
    ),
    "no spec.rollback.bake: no bake, and the one in status goes": Case(
        BAKING, moment(), phase=None, the_spec=replace(SPEC, rollback=RollbackSpec(window_seconds=1800))
    ),
    "the clock starts once the version left takes no requests": Case(
        replace(BAKING, started_at=None), moment(), phase=Phase.BAKING, started=True
    ),
    "the clock waits while the version left still takes requests": Case(
        replace(BAKING, started_at=None), moment(warm={"1": True}), phase=Phase.BAKING, started=False
    ),
    "a passing reading counts nothing": Case(BAKING, moment(), reading(), phase=Phase.BAKING, failures=0),
    "an inconclusive reading (too few requests) counts nothing": Case(
        BAKING, moment(), reading(requests=5, errors=5), phase=Phase.BAKING, failures=0
    ),
    "an unreadable source counts nothing": Case(
        BAKING,
        moment(),
        AnalysisResult(version="2", measured_at=NOW, error="no pod answered"),
        phase=Phase.BAKING,
        failures=0,
    ),
    "a failed reading below the limit counts once and says so": Case(
        BAKING,
        moment(),
        reading(errors=9),
        phase=Phase.BAKING,
        failures=1,
        events=(reasons.ANALYSIS_FAILED,),
    ),
    "failures reaching the limit fail the bake and plan the move back, expecting the baked version": Case(
        ONE_FAILURE,
        moment(),
        reading(errors=9),
        phase=Phase.FAILED,
        failures=2,
        alias_write=AliasWrite.PLANNED,
        events=(reasons.BAKE_FAILED,),
        change=("2", "1"),
        outcome="failed",
    ),
    "a reading of another version is not this bake's": Case(
        ONE_FAILURE, moment(), reading("3", errors=9), phase=Phase.BAKING, failures=1
    ),
    "a reading taken before the clock started is not counted": Case(
        ONE_FAILURE, moment(), reading(errors=9, at=ago(120)), phase=Phase.BAKING, failures=1
    ),
    "the registry down: a failure still counts and fails the bake, but no write is planned": Case(
        ONE_FAILURE,
        moment(fresh=False),
        reading(errors=9),
        phase=Phase.FAILED,
        alias_write=AliasWrite.PLANNED,
        events=(reasons.BAKE_FAILED,),
        change=None,
        outcome="failed",
    ),
    "a failed bake's write is planned again every pass while production names the baked version": Case(
        FAILED,
        moment(),
        phase=Phase.FAILED,
        alias_write=AliasWrite.PLANNED,
        change=("2", "1"),
        outcome="failed",
    ),
    "a failed bake's write is done once production names the version left": Case(
        FAILED,
        moment(production="1", alias="1", warm={"2": True}),
        phase=Phase.FAILED,
        alias_write=AliasWrite.MADE,
        outcome="failed",
    ),
    "a failed bake's write is dropped when production was moved elsewhere meanwhile": Case(
        FAILED, moment(production="3", alias="3"), phase=Phase.FAILED, alias_write=None, outcome="failed"
    ),
    "an attempted write whose outcome is unknown is never made again": Case(
        replace(FAILED, alias_write=AliasWrite.ATTEMPTED),
        moment(),
        phase=Phase.FAILED,
        alias_write=AliasWrite.ATTEMPTED,
        outcome="failed",
    ),
    "a move of production during the bake supersedes it": Case(
        ONE_FAILURE,
        moment(production="1", alias="1", warm={"2": True}),
        reading(errors=9),
        phase=Phase.SUPERSEDED,
        failures=1,
        events=(reasons.BAKE_SUPERSEDED,),
    ),
    "@production removed during the bake supersedes it": Case(
        ONE_FAILURE, moment(alias=None), phase=Phase.SUPERSEDED, failures=1, events=(reasons.BAKE_SUPERSEDED,)
    ),
    "the registry down: a bake is not superseded on aliases it cannot see": Case(
        ONE_FAILURE, moment(fresh=False), phase=Phase.BAKING, failures=1
    ),
    "the duration ended: the bake passes": Case(
        replace(BAKING, started_at=ago(600)),
        moment(),
        phase=Phase.PASSED,
        events=(reasons.BAKE_PASSED,),
        outcome="passed",
    ),
    "the duration ended with the registry down: the bake holds": Case(
        replace(BAKING, started_at=ago(600)), moment(fresh=False), phase=Phase.BAKING
    ),
    "the last reading fails at the end: failed, not passed": Case(
        replace(ONE_FAILURE, started_at=ago(600)),
        moment(),
        reading(errors=9),
        phase=Phase.FAILED,
        alias_write=AliasWrite.PLANNED,
        events=(reasons.BAKE_FAILED,),
        change=("2", "1"),
        outcome="failed",
    ),
    "a move forward during a bake supersedes it and starts the next bake": Case(
        BAKING,
        moment(production="3", before="2", alias="3", warm={"2": True, "1": False}),
        phase=Phase.BAKING,
        version="3",
        events=(reasons.BAKE_SUPERSEDED, reasons.BAKE_STARTED),
    ),
    "a move forward from a version whose bake failed starts no bake (the record stays)": Case(
        replace(FAILED, alias_write=AliasWrite.MADE),
        moment(production="3", before="2", alias="3", warm={"2": True, "1": False}),
        phase=Phase.FAILED,
        alias_write=AliasWrite.MADE,
        outcome="failed",
    ),
    "a passed bake is kept until the next move forward": Case(
        replace(BAKING, phase=Phase.PASSED, ended_at=ago(60)), moment(), phase=Phase.PASSED, outcome="passed"
    ),
    "suspended: no reading, no end": Case(
        replace(BAKING, started_at=ago(600)),
        moment(),
        reading(errors=9),
        phase=Phase.BAKING,
        failures=0,
        the_spec=replace(SPEC, suspend=True),
    ),
    "another model's bake says nothing of this one": Case(
        replace(BAKING, model="other"), moment(), phase=None
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule(name: str) -> None:
    case = CASES[name]
    advanced = bake_run.advance(
        spec=case.the_spec, previous=case.previous, moment=case.moment, analysis=case.analysis
    )
    bake = advanced.bake
    if case.phase is None:
        assert bake is None
        return
    assert bake is not None
    assert (bake.phase, bake.version) == (case.phase, case.version)
    if case.failures is not None:
        assert bake.failures == case.failures
    if case.phase is Phase.FAILED or case.alias_write is not None:
        assert bake.alias_write is case.alias_write
    if case.started is not None:
        assert (bake.started_at is not None) is case.started
    assert tuple(event.reason for event in advanced.events) == case.events
    writes = bake_writes(owner=OWNER, spec=case.the_spec, bake=bake, moment=case.moment)
    changes = [(w.expect, w.to) for w in writes if isinstance(w, AliasChange)]
    assert changes == ([case.change] if case.change else [])
    outcomes = [w.tags["aliasroll.io/bake.outcome"] for w in writes if isinstance(w, TagVersion)]
    assert outcomes == ([case.outcome] if case.outcome else [])
    # Every bake reads back from status as it was.
    assert bake_run.from_status(bake_run.to_status(bake, case.the_spec)) == replace(
        bake, measurements=tuple(bake.measurements)
    )


def test_the_failed_event_names_the_metric_its_value_and_bound() -> None:
    advanced = bake_run.advance(spec=SPEC, previous=ONE_FAILURE, moment=moment(), analysis=reading(errors=9))
    (event,) = advanced.events
    assert event.type == "Warning"
    assert "error rate 9.00% above its bound 1.00% (absolute)" in event.message
    assert "back to version 1" in event.message


def test_readings_are_due_an_interval_apart_while_the_clock_runs() -> None:
    assert not bake_run.measurement_due(SPEC, replace(BAKING, started_at=None), NOW)
    assert bake_run.measurement_due(SPEC, BAKING, NOW)
    assert not bake_run.measurement_due(SPEC, replace(BAKING, read_at=ago(10)), NOW)
    assert bake_run.measurement_due(SPEC, replace(BAKING, read_at=ago(30)), NOW)
    assert not bake_run.measurement_due(SPEC, FAILED, NOW)
    assert bake_run.next_pass_in(SPEC, BAKING, NOW) == 0
    assert bake_run.next_pass_in(SPEC, replace(BAKING, read_at=ago(10)), NOW) == 20
    # The end comes before the next reading.
    assert bake_run.next_pass_in(SPEC, replace(BAKING, started_at=ago(595), read_at=ago(10)), NOW) == 5
    assert bake_run.next_pass_in(SPEC, FAILED, NOW) is None


def test_a_status_that_cannot_be_read_is_no_bake() -> None:
    assert bake_run.from_status(None) is None
    assert bake_run.from_status({"version": "2", "previous": "1", "phase": "Cooking"}) is None
    assert bake_run.from_status({"version": "2", "phase": "Baking"}) is None


def test_the_readings_key_is_the_resource_s_own_beside_the_canary_s() -> None:
    assert bake_run.reading_key("uid-1") == "uid-1/bake"
