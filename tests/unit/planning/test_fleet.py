"""planning/fleet.py rule by rule: a table of cases keyed by sentences (the histories that string them
together are in test_fleet_model.py), and status' round trip (planning/fleet_status.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from aliasroll.planning.fleet import (
    Decision,
    FastMove,
    MoveKind,
    Role,
    RollbackSettings,
    RunningVersion,
    Sizes,
    Split,
    Switch,
    VersionId,
    Wanted,
    apportion,
    decide,
)
from aliasroll.planning.fleet_status import model_uri, remembered, to_status

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
P, C, L, W = Role.PRODUCTION, Role.CANARY, Role.LEAVING, Role.WARM


def v(number: int, model: str = "sentiment") -> VersionId:
    return VersionId(model, str(number))


def ago(seconds: int) -> datetime:
    return NOW - timedelta(seconds=seconds)


def run(
    number: int,
    replicas: int,
    available: int,
    *,
    ready: int | None = None,
    routed: bool = True,
    was: Role | None = None,
    left: datetime | None = None,
) -> RunningVersion:
    return RunningVersion(
        id=v(number),
        replicas=replicas,
        available=available,
        ready=available if ready is None else ready,
        routed=routed,
        was=was,
        left_production=left,
    )


def warm(number: int, replicas: int, *, left: datetime, ready: int | None = None) -> RunningVersion:
    return run(
        number, replicas, 0, ready=replicas if ready is None else ready, routed=False, was=W, left=left
    )


WINDOW = RollbackSettings(window=1800, max_warm=1, floor=None)
FLOOR_1 = RollbackSettings(window=1800, max_warm=1, floor=1)


@dataclass(frozen=True)
class Case:
    name: str
    running: list[RunningVersion]
    production: int
    # {version: (role, replicas, routed)} for every version kept; the others must be removed.
    expected: dict[int, tuple[Role, int, bool]]
    canary: int | None = None
    weight: int = 0
    sizes: tuple[int, int, int] = (4, 4, 0)  # spec.replicas, production's size, the canary's
    split: Split = Split.PODS
    settings: RollbackSettings = field(default_factory=RollbackSettings)
    switch: Switch | None = None
    shares: dict[int, int] = field(default_factory=dict)  # checked where given
    started: MoveKind | None = None  # a fast move under way after the pass
    ended: FastMove | None = None


CASES = [
    Case(
        "first deploy: production's Deployment is created at its size and routed",
        running=[],
        production=1,
        expected={1: (P, 4, True)},
    ),
    Case(
        "window 0: the old production keeps serving while the new version comes up (today's behaviour)",
        running=[run(1, 4, 4, was=P)],
        production=2,
        expected={1: (L, 4, True), 2: (P, 4, True)},
        shares={1: 100, 2: 0},
    ),
    Case(
        "the new production's pods count as they become available: the old version keeps only the rest",
        running=[run(1, 4, 4, was=L), run(2, 4, 3, was=P)],
        production=2,
        expected={1: (L, 1, True), 2: (P, 4, True)},
    ),
    Case(
        "window 0: the old production goes once the new version carries every pod",
        running=[run(1, 4, 4, was=L), run(2, 4, 4, was=P)],
        production=2,
        expected={2: (P, 4, True)},
    ),
    Case(
        "window set: the old production is kept at its floor once unrouted, until its window ends",
        running=[run(1, 4, 4, was=L, left=ago(60)), run(2, 4, 4, was=P)],
        production=2,
        settings=FLOOR_1,
        expected={1: (W, 1, False), 2: (P, 4, True)},
    ),
    Case(
        "without a floor a warm version keeps every pod",
        running=[run(1, 4, 4, was=L, left=ago(60)), run(2, 4, 4, was=P)],
        production=2,
        settings=WINDOW,
        expected={1: (W, 4, False), 2: (P, 4, True)},
    ),
    Case(
        "a floor above spec.replicas keeps spec.replicas",
        running=[warm(1, 2, left=ago(60)), run(2, 2, 2, was=P)],
        production=2,
        sizes=(2, 2, 0),
        settings=RollbackSettings(window=1800, floor=5),
        expected={1: (W, 2, False), 2: (P, 2, True)},
    ),
    Case(
        "a warm version goes when its window ends",
        running=[warm(1, 1, left=ago(1800)), run(2, 4, 4, was=P)],
        production=2,
        settings=FLOOR_1,
        expected={2: (P, 4, True)},
    ),
    Case(
        "shortening the window applies to the versions already warm",
        running=[warm(1, 1, left=ago(600)), run(2, 4, 4, was=P)],
        production=2,
        settings=RollbackSettings(window=300, floor=1),
        expected={2: (P, 4, True)},
    ),
    Case(
        "setting the window back to 0 lets every warm version go",
        running=[warm(1, 1, left=ago(10)), run(2, 4, 4, was=P)],
        production=2,
        expected={2: (P, 4, True)},
    ),
    Case(
        "at most maxWarm versions stay warm: those that left production last",
        running=[warm(1, 1, left=ago(100)), warm(2, 1, left=ago(50)), run(3, 4, 4, was=P)],
        production=3,
        settings=FLOOR_1,
        expected={2: (W, 1, False), 3: (P, 4, True)},
    ),
    Case(
        "raising the floor scales warm versions up, unrouted",
        running=[warm(1, 1, left=ago(100)), run(2, 4, 4, was=P)],
        production=2,
        settings=RollbackSettings(window=1800, floor=3),
        expected={1: (W, 3, False), 2: (P, 4, True)},
    ),
    Case(
        "rollback to a warm version at full size: only routing changes, no pod is created",
        running=[warm(1, 4, left=ago(60)), run(2, 4, 4, was=P)],
        production=1,
        settings=WINDOW,
        expected={1: (P, 4, True), 2: (L, 4, True)},
        shares={1: 0, 2: 100},
        started=MoveKind.ROLLBACK,
    ),
    Case(
        "the rollback ends as the warm pods take requests: the version left is warm, the event times it",
        running=[run(1, 4, 4, was=P), run(2, 4, 4, was=L, left=ago(2))],
        production=1,
        settings=WINDOW,
        switch=Switch(MoveKind.ROLLBACK, v(2), v(1), ago(2)),
        expected={1: (P, 4, True), 2: (W, 4, False)},
        ended=FastMove(MoveKind.ROLLBACK, v(2), v(1), 2.0),
    ),
    Case(
        "rollback to a warm version at its floor: it scales up in parallel and takes requests at once",
        running=[warm(1, 1, left=ago(60)), run(2, 4, 4, was=P)],
        production=1,
        settings=FLOOR_1,
        expected={1: (P, 4, True), 2: (L, 4, True)},
        started=MoveKind.ROLLBACK,
    ),
    Case(
        "while the floor's new pods come up, the version left keeps only what they do not carry",
        running=[run(1, 4, 2, was=P), run(2, 4, 4, was=L, left=ago(5))],
        production=1,
        settings=FLOOR_1,
        switch=Switch(MoveKind.ROLLBACK, v(2), v(1), ago(5)),
        expected={1: (P, 4, True), 2: (L, 2, True)},
        started=MoveKind.ROLLBACK,
    ),
    Case(
        "a version still leaving is kept above its floor only for what it carries",
        running=[run(1, 4, 3, was=P), run(2, 4, 4, was=L, left=ago(5))],
        production=1,
        settings=RollbackSettings(window=1800, floor=2),
        expected={1: (P, 4, True), 2: (L, 2, True)},
    ),
    Case(
        "moving back to a version still leaving and carrying every pod is a rollback done in the same pass",
        running=[run(1, 4, 4, was=L), run(2, 4, 1, was=P)],
        production=1,
        expected={1: (P, 4, True)},
        ended=FastMove(MoveKind.ROLLBACK, v(2), v(1), 0.0),
    ),
    Case(
        "moving to a version that is not warm starts it cold: no fast move",
        running=[warm(1, 4, left=ago(60)), run(2, 4, 4, was=P)],
        production=3,
        settings=WINDOW,
        expected={2: (L, 4, True), 3: (P, 4, True)},
    ),
    Case(
        "a move elsewhere during a fast rollback ends it without an event",
        running=[run(1, 4, 2, was=P), run(2, 4, 4, was=L, left=ago(5))],
        production=3,
        switch=Switch(MoveKind.ROLLBACK, v(2), v(1), ago(5)),
        settings=WINDOW,
        expected={1: (W, 4, False), 2: (L, 4, True), 3: (P, 4, True)},
    ),
    Case(
        "a version that never had an available pod as production is not kept warm",
        running=[run(1, 4, 4, was=L, left=ago(30)), run(2, 4, 0, was=P)],
        production=3,
        settings=RollbackSettings(window=1800, max_warm=2),
        expected={1: (L, 4, True), 3: (P, 4, True)},
    ),
    Case(
        "a promoted canary's pods take production's requests at once, production's new pods start together",
        running=[run(1, 3, 3, was=P), run(2, 1, 1, was=C)],
        production=2,
        settings=WINDOW,
        expected={1: (L, 3, True), 2: (P, 4, True)},
        shares={1: 75, 2: 25},
        started=MoveKind.PROMOTION,
    ),
    Case(
        "the promotion ends once the promoted version carries every pod; the old production stays warm",
        running=[run(1, 3, 3, was=L, left=ago(40)), run(2, 4, 4, was=P)],
        production=2,
        settings=WINDOW,
        switch=Switch(MoveKind.PROMOTION, v(1), v(2), ago(40)),
        expected={1: (W, 4, False), 2: (P, 4, True)},
        ended=FastMove(MoveKind.PROMOTION, v(1), v(2), 40.0),
    ),
    Case(
        "a canary starts: production keeps every pod until the canary's are available",
        running=[run(1, 4, 4, was=P)],
        production=1,
        canary=2,
        weight=25,
        sizes=(4, 3, 1),
        expected={1: (P, 4, True), 2: (C, 1, True)},
    ),
    Case(
        "a canary pod available: production gives one up",
        running=[run(1, 4, 4, was=P), run(2, 1, 1, was=C)],
        production=1,
        canary=2,
        weight=25,
        sizes=(4, 3, 1),
        expected={1: (P, 3, True), 2: (C, 1, True)},
        shares={1: 80, 2: 20},
    ),
    Case(
        "a new production during a canary that does not come up carries every pod itself",
        running=[run(1, 3, 3, was=P), run(3, 1, 0, was=C)],
        production=2,
        canary=3,
        weight=25,
        sizes=(4, 3, 1),
        expected={1: (L, 3, True), 2: (P, 4, True), 3: (C, 1, True)},
    ),
    Case(
        "the canary's weight goes down: it shrinks only as production's pods cover it",
        running=[run(1, 2, 2, was=P), run(2, 2, 2, was=C)],
        production=1,
        canary=2,
        weight=25,
        sizes=(4, 3, 1),
        expected={1: (P, 3, True), 2: (C, 2, True)},
    ),
    Case(
        "an ended canary drains: routed while production lacks pods, never kept warm",
        running=[run(1, 3, 3, was=P), run(2, 1, 1, was=C)],
        production=1,
        settings=WINDOW,
        expected={1: (P, 4, True), 2: (L, 1, True)},
    ),
    Case(
        "an ended canary goes once production carries every pod",
        running=[run(1, 4, 4, was=P), run(2, 1, 1, was=L)],
        production=1,
        settings=WINDOW,
        expected={1: (P, 4, True)},
    ),
    Case(
        "rollback during a canary: production returns to its warm version, the canary keeps its share",
        running=[warm(1, 4, left=ago(60)), run(2, 3, 3, was=P), run(3, 1, 1, was=C)],
        production=1,
        canary=3,
        weight=25,
        sizes=(4, 3, 1),
        settings=WINDOW,
        expected={1: (P, 3, True), 2: (L, 3, True), 3: (C, 1, True)},
        started=MoveKind.ROLLBACK,
    ),
    Case(
        "a warm version named by @canary is the canary at once",
        running=[warm(1, 4, left=ago(60)), run(2, 4, 4, was=P)],
        production=2,
        canary=1,
        weight=25,
        sizes=(4, 3, 1),
        settings=WINDOW,
        expected={1: (C, 1, True), 2: (P, 4, True)},
    ),
    Case(
        "a version the aliases do not name is never routed again, even while production lacks pods",
        running=[warm(1, 4, left=ago(60)), run(2, 4, 2, was=P)],
        production=2,
        settings=WINDOW,
        expected={1: (W, 4, False), 2: (P, 4, True)},
    ),
    Case(
        "spec.replicas 0: no version asks for a pod, warm ones neither",
        running=[warm(1, 4, left=ago(60)), run(2, 4, 4, was=P)],
        production=2,
        sizes=(0, 0, 0),
        settings=WINDOW,
        expected={1: (W, 0, False), 2: (P, 0, True)},
    ),
    Case(
        "gatewayAPI: the new production's weight grows with its available pods, the one left has the rest",
        running=[run(1, 4, 4, was=L), run(2, 4, 1, was=P)],
        production=2,
        split=Split.WEIGHTS,
        expected={1: (L, 3, True), 2: (P, 4, True)},
        shares={1: 75, 2: 25},
    ),
    Case(
        "gatewayAPI: the canary's weight is scaled by its available pods",
        running=[run(1, 4, 4, was=P), run(2, 2, 1, was=C)],
        production=1,
        canary=2,
        weight=50,
        sizes=(4, 4, 2),
        split=Split.WEIGHTS,
        expected={1: (P, 4, True), 2: (C, 2, True)},
        shares={1: 75, 2: 25},
    ),
    Case(
        "gatewayAPI: with no production pod available the canary takes every request",
        running=[run(1, 4, 0, was=P), run(2, 2, 2, was=C)],
        production=1,
        canary=2,
        weight=50,
        sizes=(4, 4, 2),
        split=Split.WEIGHTS,
        expected={1: (P, 4, True), 2: (C, 2, True)},
        shares={1: 0, 2: 100},
    ),
]


def decided(case: Case) -> Decision:
    replicas, production, canary = case.sizes
    return decide(
        running=case.running,
        wanted=Wanted(
            production=v(case.production),
            canary=v(case.canary) if case.canary is not None else None,
            canary_weight=case.weight,
        ),
        sizes=Sizes(replicas=replicas, production=production, canary=canary, split=case.split),
        settings=case.settings,
        switch=case.switch,
        now=NOW,
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rule(case: Case) -> None:
    decision = decided(case)
    got = {int(plan.id.version): (plan.role, plan.replicas, plan.routed) for plan in decision.versions}
    assert got == case.expected
    running = {int(version.id.version) for version in case.running}
    assert {int(version.version) for version in decision.remove} == running - set(got)
    for number, share in case.shares.items():
        assert decision.get(v(number)).share == share, (number, decision)  # type: ignore[union-attr]
    assert (decision.switch.kind if decision.switch else None) == case.started
    assert decision.fast_move == case.ended
    for plan in decision.versions:
        assert (plan.role is W) == (plan.warm_until is not None)
        if plan.role is W:
            assert plan.left_production is not None
            assert plan.warm_until == plan.left_production + timedelta(seconds=case.settings.window)


def test_a_fast_move_starts_when_the_alias_moves_and_is_timed_from_then() -> None:
    case = next(case for case in CASES if case.name.startswith("rollback to a warm version at full"))
    decision = decided(case)
    assert decision.switch == Switch(MoveKind.ROLLBACK, v(2), v(1), NOW)
    assert decision.get(v(2)).left_production == NOW  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, {v(1): 1, v(2): 1, v(3): 1}, {v(1): 34, v(2): 33, v(3): 33}),
        (100, {v(1): 0, v(2): 0}, {v(1): 0, v(2): 0}),
        (100, {v(1): 3, v(2): 1}, {v(1): 75, v(2): 25}),
        (7, {v(1): 2, v(2): 1}, {v(1): 5, v(2): 2}),
    ],
)
def test_apportion_adds_up(total: int, weights: dict[VersionId, int], expected: dict[VersionId, int]) -> None:
    assert apportion(total, weights) == expected


# --- status, both ways ---------------------------------------------------------------------------


def status_after(decision: Decision) -> dict[str, object]:
    named = {plan.role: plan.id for plan in decision.versions if plan.role in (P, C)}
    status: dict[str, object] = {**to_status(decision)}
    for role, version in named.items():
        status[role.value] = {"version": version.version, "modelUri": model_uri(version)}
    return status


def test_status_keeps_what_the_next_pass_decides_on() -> None:
    case = next(case for case in CASES if case.name.startswith("rollback to a warm version at its floor"))
    decision = decided(case)
    status = status_after(decision)
    assert status["warm"] == [
        {"model": "sentiment", "version": "2", "since": "2026-12-07T12:00:00Z", "replicas": 4, "routed": True}
    ]
    assert status["fastSwitch"] == {
        "kind": "rollback",
        "since": "2026-12-07T12:00:00Z",
        "from": {"model": "sentiment", "version": "2"},
        "to": {"model": "sentiment", "version": "1"},
    }
    memory = remembered(status)
    assert memory.switch == decision.switch
    observed = [run(1, 4, 1), run(2, 4, 4)]
    joined = {version.id: version for version in memory.join(observed)}
    assert joined[v(1)].was is P
    assert joined[v(2)].was is L
    assert joined[v(2)].left_production == NOW


def test_a_warm_version_is_read_back_warm_with_its_until() -> None:
    case = next(case for case in CASES if case.name.startswith("window set: the old production"))
    status = status_after(decided(case))
    assert status["warm"] == [
        {
            "model": "sentiment",
            "version": "1",
            "since": "2026-12-07T11:59:00Z",
            "until": "2026-12-07T12:29:00Z",
            "replicas": 1,
            "routed": False,
        }
    ]
    (joined,) = remembered(status).join([run(1, 1, 0, routed=False)])
    assert (joined.was, joined.left_production) == (W, ago(60))


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"warm": None, "fastSwitch": None},
        {"warm": [{"model": "sentiment"}, "junk", {"model": "m", "version": "1", "since": "yesterday"}]},
        {"fastSwitch": {"kind": "sideways", "since": "2026-12-07T12:00:00Z"}},
        {"production": {"modelUri": "runs:/abc/model"}, "canary": {"modelUri": "models:/"}},
        {"warm": [{"model": "m", "version": "1", "since": "2026-12-07T12:00:00"}]},  # no zone
    ],
)
def test_a_status_that_cannot_be_read_only_costs_warmth(status: dict[str, object]) -> None:
    memory = remembered(status)
    assert (memory.production, memory.canary, dict(memory.left), memory.switch) == (None, None, {}, None)


def test_a_model_name_with_slashes_is_read_back_whole() -> None:
    memory = remembered({"production": {"modelUri": "models:/team/sentiment/3"}})
    assert memory.production == VersionId("team/sentiment", "3")
