"""When the next pass is due and whether a pass moved a rollout on (planning/next_pass.py), as a
table of named cases: every branch of the timing (poll, at rest, a registry error, a canary step or
reading due sooner, the floor, a reading under way) and of "moved on"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aliasroll import reasons
from aliasroll.conditions import FALSE, TRUE, UNKNOWN
from aliasroll.planning import canary
from aliasroll.planning.bake import Bake
from aliasroll.planning.bake import Phase as BakePhase
from aliasroll.planning.bake import to_status as to_bake_status
from aliasroll.planning.canary import CanaryRun, Phase
from aliasroll.planning.next_pass import (
    AT_REST_PASS_SECONDS,
    MIN_CANARY_PASS_SECONDS,
    PassEnd,
    moved_on,
    next_pass_in,
)
from aliasroll.spec import ModelDeploymentSpec, parse_spec

NOW = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
POLL = 30.0
INTERVAL = 10.0  # the canary analysis' interval


def spec(**fields: Any) -> ModelDeploymentSpec:
    return parse_spec(
        {
            "model": {"name": "sentiment"},
            "registry": {"trackingUri": "http://mlflow:5000", "pollInterval": f"{int(POLL)}s"},
            "canary": {
                "alias": "canary",
                "steps": [{"weight": 10, "duration": "1m"}],
                "analysis": {"interval": f"{int(INTERVAL)}s", "errorRate": {"maxPercent": 1}},
            },
        }
        | fields
    )


def condition(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": ""}


AT_REST = {
    "conditions": [
        condition(reasons.READY, TRUE, reasons.SERVING),
        condition(reasons.PROGRESSING, FALSE, reasons.ROLLOUT_COMPLETE),
        condition(reasons.ALIASES_RESOLVED, TRUE, "Resolved"),
        condition(reasons.REGISTRY_REACHABLE, TRUE, "Reachable"),
    ]
}
ROLLING = {
    "conditions": [
        condition(reasons.READY, FALSE, reasons.ROLLING_OUT),
        condition(reasons.PROGRESSING, TRUE, reasons.ROLLING_OUT),
    ]
}


def analysing(read: float | None) -> dict[str, Any]:
    """A status whose canary run is at its first step, last read `read` seconds before NOW."""
    run = CanaryRun(
        version="3",
        phase=Phase.ANALYZING,
        model="sentiment",
        step_started_at=NOW - timedelta(seconds=5),
        read_at=None if read is None else NOW - timedelta(seconds=read),
        measured_at=None if read is None else NOW - timedelta(seconds=read),
    )
    return {**ROLLING, "canary": canary.to_status(run, spec().canary)}


BAKED = {
    "window": "30m",
    "bake": {"duration": "1m", "analysis": {"interval": f"{int(INTERVAL)}s", "errorRate": {"maxPercent": 1}}},
}


def baking(read: float | None) -> dict[str, Any]:
    """A status whose bake's clock runs (since 5 s), last read `read` seconds before NOW."""
    bake = Bake(
        version="2",
        previous="1",
        phase=BakePhase.BAKING,
        model="sentiment",
        started_at=NOW - timedelta(seconds=5),
        read_at=None if read is None else NOW - timedelta(seconds=read),
    )
    return {**ROLLING, "bake": to_bake_status(bake, spec(rollback=BAKED))}


@dataclass(frozen=True)
class Case:
    status: dict[str, Any]
    expected: float
    answered: bool = True
    due_in: float | None = None
    reading: bool = False
    bake_reading: bool = False
    baked: bool = False  # spec.rollback.bake is set


CASES = {
    "a resource rolling out is passed every poll interval": Case(ROLLING, POLL),
    "a resource at rest waits for a wake, with only the safety net": Case(AT_REST, AT_REST_PASS_SECONDS),
    "a registry that did not answer keeps the poll interval even at rest": Case(
        AT_REST, POLL, answered=False
    ),
    "a canary step ending sooner than the poll brings the pass forward": Case(ROLLING, 12.0, due_in=12.0),
    "a canary event later than the poll leaves the poll": Case(ROLLING, POLL, due_in=45.0),
    "a reading due now is never closer than the floor": Case(ROLLING, MIN_CANARY_PASS_SECONDS, due_in=0.0),
    "a canary event sooner than the safety net wakes a resource at rest": Case(AT_REST, 50.0, due_in=50.0),
    "a reading under way counts the next one an interval from now": Case(
        analysing(read=20), INTERVAL, due_in=0.0, reading=True
    ),
    "a reading under way with no run left in status waits the poll": Case(
        ROLLING, POLL, due_in=0.0, reading=True
    ),
    "a reading under way leaves a step's end that comes sooner": Case(
        analysing(read=20)
        | {"canary": analysing(read=20)["canary"] | {"stepStartedAt": "2026-12-07T09:59:03Z"}},
        3.0,
        due_in=0.0,
        reading=True,
    ),
    "a bake reading under way counts the next one an interval from now": Case(
        baking(read=20), INTERVAL, due_in=0.0, bake_reading=True, baked=True
    ),
    "a canary reading under way leaves a bake reading due now": Case(
        analysing(read=20) | baking(read=None), MIN_CANARY_PASS_SECONDS, due_in=0.0, reading=True, baked=True
    ),
    "both readings under way: the next in an interval": Case(
        analysing(read=20) | baking(read=20),
        INTERVAL,
        due_in=0.0,
        reading=True,
        bake_reading=True,
        baked=True,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_next_pass_is_due(case: Case) -> None:
    end = PassEnd(
        spec=spec(rollback=BAKED) if case.baked else spec(),
        status=case.status,
        now=NOW,
        registry_answered=case.answered,
        canary_due_in=case.due_in,
        reading_under_way=case.reading,
        bake_reading_under_way=case.bake_reading,
    )
    assert next_pass_in(end) == pytest.approx(case.expected)


RECORDED_PENDING = condition(reasons.RECORDED, UNKNOWN, reasons.RECORDS_PENDING)
RECORDED_DONE = condition(reasons.RECORDED, TRUE, reasons.RECORDS_WRITTEN)

MOVES = {
    "the same status has not moved on": (AT_REST, AT_REST, False),
    "only the records' state changed: not moved on": (
        {"conditions": [*AT_REST["conditions"], RECORDED_DONE]},
        {"conditions": [*AT_REST["conditions"], RECORDED_PENDING]},
        False,
    ),
    "the records appearing for the first time is not moving on": (
        {"conditions": [*AT_REST["conditions"], RECORDED_PENDING]},
        AT_REST,
        False,
    ),
    "a condition besides the records changed: moved on": (ROLLING, AT_REST, True),
    "a field besides the conditions changed: moved on": ({**AT_REST, "replicas": 3}, AT_REST, True),
}


@pytest.mark.parametrize(("status", "before", "expected"), MOVES.values(), ids=MOVES.keys())
def test_a_pass_moved_its_rollout_on(status: dict[str, Any], before: dict[str, Any], expected: bool) -> None:
    assert moved_on(status, before) is expected
