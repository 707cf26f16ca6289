"""The audit trail (planning/history.py), as tables of named cases: what a track's status entry says
it served, the event each change is told by, and the history after a pass (a span opening and
closing, a promotion told once, a rollback, a rename, an ended canary's outcome kept on its span,
and the limits dropping the oldest closed span, returned, while an open span always stays)."""

from __future__ import annotations

from typing import Any

import pytest
from builders import canary_spec, spec

from aliasroll import reasons
from aliasroll.planning.canary import CanaryRun, Phase
from aliasroll.planning.history import (
    HISTORY_LIMIT,
    HISTORY_LIMITS,
    TrackChanges,
    change_event,
    recorded,
    serving,
    track_changes,
)
from aliasroll.planning.state import EventRecord, ServedVersion
from aliasroll.planning.version_decision import TrackDecision
from aliasroll.spec import ModelDeploymentSpec, Track

P, C = Track.PRODUCTION, Track.CANARY
NOW = "2026-12-07T12:00:00Z"
T = [f"2026-12-07T0{hour}:00:00Z" for hour in range(10)]  # earlier passes, oldest first
SHARE = "20% of requests"
CANARY = canary_spec(20)
STEPPED = spec(canary={"alias": "canary", "steps": [{"weight": 10, "duration": "1m"}]})
RENAMED = spec(model={"name": "fraud", "alias": "production"})
NO_CANARY = TrackDecision(target=None)


def served(version: str, model: str = "sentiment") -> ServedVersion:
    return ServedVersion(model=model, version=version, run_id=f"run-{version}")


def entry(version: str, since: str | None = T[1], model: str = "sentiment", **fields: Any) -> dict[str, Any]:
    """A track's status entry as the last pass wrote it."""
    written = {"version": version, "modelUri": f"models:/{model}/{version}", "runId": f"run-{version}"}
    return written | ({"since": since} if since else {}) | fields


def span(track: Track, version: str, start: str, end: str | None = None, **fields: Any) -> dict[str, Any]:
    """A span of status.history; `reason` defaults to the one a plain roll-out records."""
    written: dict[str, Any] = {
        "track": track.value,
        "model": fields.pop("model", "sentiment"),
        "version": version,
        "from": start,
        "reason": fields.pop("reason", reasons.ROLLOUT_STARTED),
    }
    return written | ({"to": end} if end else {}) | fields


def ended(version: str, phase: Phase) -> CanaryRun:
    return CanaryRun(version=version, phase=phase, model="sentiment")


def normal(reason: str, message: str) -> EventRecord:
    return EventRecord("Normal", reason, message)


# --- what a track's status entry says it served ------------------------------------------------

RECORDED = [
    pytest.param({}, P, None, id="a track with no entry served nothing"),
    pytest.param({"canary": None}, C, None, id="a track whose entry is null served nothing"),
    pytest.param({"production": {"since": T[1]}}, P, None, id="an entry without a version served nothing"),
    pytest.param(
        {"production": entry("3", model="fraud")},
        P,
        ServedVersion("fraud", "3", "run-3"),
        id="the model is the one the pinned model URI names",
    ),
    pytest.param(
        {"production": {"version": "3"}},
        P,
        ServedVersion("sentiment", "3", None),
        id="an entry without a model URI served spec.model.name's model",
    ),
    pytest.param(
        {"production": {"version": 3, "modelUri": "models:/sentiment/3"}},
        P,
        ServedVersion("sentiment", "3", None),
        id="a version number written as an integer is read as text",
    ),
    pytest.param(
        {"canary": entry("3", phase="Aborted", replicas=0)},
        C,
        None,
        id="an aborted canary run's record with no pods left serves nothing",
    ),
    pytest.param(
        {"canary": entry("3", phase="Succeeded")},
        C,
        None,
        id="a succeeded canary run's record without replicas serves nothing",
    ),
    pytest.param(
        {"canary": entry("3", phase="Aborted", replicas=2)},
        C,
        served("3"),
        id="an aborted canary whose pods are still there still serves",
    ),
    pytest.param(
        {"canary": entry("3", phase="Analyzing", replicas=0)},
        C,
        served("3"),
        id="a canary run in progress serves even before its pods are counted",
    ),
    pytest.param(
        {"production": entry("2"), "canary": entry("3")},
        C,
        served("3"),
        id="each track reads its own entry",
    ),
]


@pytest.mark.parametrize(("previous", "track", "expected"), RECORDED)
def test_the_last_status_says_what_a_track_served(
    previous: dict[str, Any], track: Track, expected: ServedVersion | None
) -> None:
    assert recorded(previous, track, model="sentiment") == expected


SERVING = [
    pytest.param({"version": "3"}, True, id="an entry without a phase serves"),
    pytest.param({"phase": "Progressing", "replicas": 0}, True, id="a run in progress serves"),
    pytest.param({"phase": "Aborted"}, False, id="an aborted run without replicas does not serve"),
    pytest.param({"phase": "Succeeded", "replicas": 0}, False, id="a succeeded run with no pods does not"),
    pytest.param({"phase": "Aborted", "replicas": 1}, True, id="an ended run with pods left still serves"),
]


@pytest.mark.parametrize(("the_entry", "expected"), SERVING)
def test_an_ended_canary_run_serves_only_while_pods_are_left(
    the_entry: dict[str, Any], expected: bool
) -> None:
    assert serving(the_entry) is expected


# --- the event that announces a change ------------------------------------------------------------

EVENTS = [
    pytest.param(
        P,
        None,
        served("2"),
        {},
        (reasons.ROLLOUT_STARTED, "deploying version 2 of 'sentiment' (@production)"),
        id="a first deploy says which version of which model it deploys",
    ),
    pytest.param(
        P,
        served("2"),
        served("3"),
        {},
        (reasons.ROLLOUT_STARTED, "@production moved: rolling production from 2 to 3"),
        id="an alias that moves rolls production",
    ),
    pytest.param(
        P,
        served("3"),
        served("2"),
        {},
        (reasons.ROLLBACK_STARTED, "@production moved back: rolling production from 3 to 2"),
        id="an alias that moves back is told as a rollback",
    ),
    pytest.param(
        P,
        served("2"),
        served("3"),
        {"canary_before": served("3")},
        (
            reasons.CANARY_PROMOTED,
            "@production moved to the canary's version 3: production rolls from 2 to 3 and the canary ends",
        ),
        id="a move to the canary's version is told as its promotion",
    ),
    pytest.param(
        P,
        served("3"),
        served("2"),
        {"canary_before": served("2")},
        (
            reasons.CANARY_PROMOTED,
            "@production moved to the canary's version 2: production rolls from 3 to 2 and the canary ends",
        ),
        id="a move to the canary's version is a promotion even to a lower number",
    ),
    pytest.param(
        P,
        served("3"),
        served("3", model="fraud"),
        {"the_spec": RENAMED},
        (
            reasons.ROLLOUT_STARTED,
            "spec.model.name changed: rolling production from models:/sentiment/3 to models:/fraud/3",
        ),
        id="a renamed model is told as a rename, even at the same version number",
    ),
    pytest.param(
        P,
        served("3"),
        served("2", model="fraud"),
        {"the_spec": RENAMED},
        (
            reasons.ROLLOUT_STARTED,
            "spec.model.name changed: rolling production from models:/sentiment/3 to models:/fraud/2",
        ),
        id="a rename to a lower version number is a rename, not a rollback",
    ),
    pytest.param(
        P,
        served("2"),
        served("3"),
        {"the_spec": spec(model={"name": "sentiment", "alias": "champion"})},
        (reasons.ROLLOUT_STARTED, "@champion moved: rolling production from 2 to 3"),
        id="production's events name the alias spec.model.alias names",
    ),
    pytest.param(P, served("2"), None, {}, ("", ""), id="a production track that goes is not announced"),
    pytest.param(
        C,
        None,
        served("3"),
        {},
        (reasons.CANARY_STARTED, "canary version 3 (@canary) starts; in place now: 20% of requests"),
        id="a canary that starts says its alias and the share in place",
    ),
    pytest.param(
        C,
        None,
        served("3"),
        {"the_spec": spec(canary={"alias": "challenger", "weight": 20})},
        (reasons.CANARY_STARTED, "canary version 3 (@challenger) starts; in place now: 20% of requests"),
        id="the canary's events name the alias spec.canary.alias names",
    ),
    pytest.param(
        C,
        None,
        served("3"),
        {"the_spec": spec()},
        (reasons.CANARY_STARTED, "canary version 3 (@canary) starts; in place now: 20% of requests"),
        id="without spec.canary the canary's alias is told as @canary",
    ),
    pytest.param(
        C,
        served("3"),
        served("4"),
        {},
        (reasons.CANARY_UPDATED, "@canary moved: canary rolls from version 3 to 4"),
        id="a canary alias that moves rolls the canary",
    ),
    pytest.param(
        C,
        served("3", model="fraud"),
        served("4"),
        {},
        (reasons.CANARY_UPDATED, "@canary moved: canary rolls from models:/fraud/3 to 4"),
        id="a canary of another model than spec.model.name is named by its URI",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"ended": ended("3", Phase.ABORTED)},
        (reasons.CANARY_REMOVED, "canary version 3 removed: its canary run ended Aborted"),
        id="a canary removed by its run's end says how the run ended",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"ended": ended("5", Phase.ABORTED)},
        (reasons.CANARY_REMOVED, "canary version 3 removed: @canary is not set"),
        id="the end of another version's run does not explain a canary's removal",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"the_spec": spec()},
        (reasons.CANARY_REMOVED, "canary version 3 removed: spec.canary was removed"),
        id="a canary removed with spec.canary says so",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"the_spec": canary_spec(0)},
        (reasons.CANARY_REMOVED, "canary version 3 removed: spec.canary.weight is 0"),
        id="a canary removed by weight 0 says so",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"the_spec": STEPPED},
        (reasons.CANARY_REMOVED, "canary version 3 removed: @canary is not set"),
        id="a stepped canary's weight of 0 is no reason for its removal",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {"canary": TrackDecision(target=None, pointed_at="4")},
        (reasons.CANARY_REMOVED, "canary version 3 removed: @canary points at the production version"),
        id="a canary removed because its alias names production's version says so",
    ),
    pytest.param(
        C,
        served("3"),
        None,
        {},
        (reasons.CANARY_REMOVED, "canary version 3 removed: @canary is not set"),
        id="a canary removed with its alias says the alias is not set",
    ),
    pytest.param(
        C,
        None,
        None,
        {"ended": ended("3", Phase.ABORTED)},
        (reasons.CANARY_REMOVED, "canary (none) removed: @canary is not set"),
        id="a removal told of no canary names none, and no run's end explains it",
    ),
]


@pytest.mark.parametrize(("track", "before", "after", "context", "expected"), EVENTS)
def test_each_change_is_told_by_its_event(
    track: Track,
    before: ServedVersion | None,
    after: ServedVersion | None,
    context: dict[str, Any],
    expected: tuple[str, str],
) -> None:
    told = change_event(
        track=track,
        before=before,
        after=after,
        spec=context.get("the_spec", CANARY),
        canary=context.get("canary", NO_CANARY),
        canary_before=context.get("canary_before"),
        share=SHARE,
        ended=context.get("ended"),
    )
    assert told == expected


# --- the history after a pass ----------------------------------------------------------------------

STARTED = normal(reasons.ROLLOUT_STARTED, "deploying version 2 of 'sentiment' (@production)")
MOVED = normal(reasons.ROLLOUT_STARTED, "@production moved: rolling production from 2 to 3")
CANARY_STARTS = normal(reasons.CANARY_STARTED, f"canary version 3 (@canary) starts; in place now: {SHARE}")
PROMOTED = normal(
    reasons.CANARY_PROMOTED,
    "@production moved to the canary's version 3: production rolls from 2 to 3 and the canary ends",
)
SERVING_2 = {"production": entry("2"), "history": [span(P, "2", T[1])]}
WITH_CANARY_3 = {
    "production": entry("2"),
    "canary": entry("3", since=T[2]),
    "history": [span(P, "2", T[1]), span(C, "3", T[2], reason=reasons.CANARY_STARTED)],
}
CANARY_CLOSED = span(C, "3", T[2], NOW, reason=reasons.CANARY_STARTED)


def production_spans(count: int) -> list[dict[str, Any]]:
    """`count` production spans, versions 1.., each closed by the next; the last one open."""
    return [span(P, str(i + 1), T[i], T[i + 1] if i + 1 < count else None) for i in range(count)]


CHANGES = [
    pytest.param(
        {},
        {},
        {},
        TrackChanges(history=[], since={}, events=[]),
        id="nothing served before or now: no history, no event",
    ),
    pytest.param(
        {},
        {P: served("2")},
        {},
        TrackChanges(history=[span(P, "2", NOW)], since={P: NOW}, events=[STARTED]),
        id="a first deploy opens a production span and announces it",
    ),
    pytest.param(
        SERVING_2,
        {P: served("2")},
        {},
        TrackChanges(history=[span(P, "2", T[1])], since={P: T[1]}, events=[]),
        id="a version that keeps serving keeps its open span and its since, silently",
    ),
    pytest.param(
        {"production": entry("2", since=None), "history": [span(P, "2", T[1])]},
        {P: served("2")},
        {},
        TrackChanges(history=[span(P, "2", T[1])], since={P: NOW}, events=[]),
        id="a version that keeps serving with no since recorded serves since now",
    ),
    pytest.param(
        SERVING_2,
        {P: served("3")},
        {},
        TrackChanges(history=[span(P, "2", T[1], NOW), span(P, "3", NOW)], since={P: NOW}, events=[MOVED]),
        id="an alias that moves closes the old span and opens the next",
    ),
    pytest.param(
        {"production": entry("3"), "history": [span(P, "3", T[1])]},
        {P: served("2")},
        {},
        TrackChanges(
            history=[span(P, "3", T[1], NOW), span(P, "2", NOW, reason=reasons.ROLLBACK_STARTED)],
            since={P: NOW},
            events=[
                normal(reasons.ROLLBACK_STARTED, "@production moved back: rolling production from 3 to 2")
            ],
        ),
        id="a rollback is told and recorded on its span as one",
    ),
    pytest.param(
        SERVING_2,
        {},
        {},
        TrackChanges(history=[span(P, "2", T[1], NOW)], since={}, events=[]),
        id="a production that goes closes its span, silently",
    ),
    pytest.param(
        {"production": entry("3"), "history": [span(P, "3", T[1])]},
        {P: served("3", model="fraud")},
        {"the_spec": RENAMED},
        TrackChanges(
            history=[span(P, "3", T[1], NOW), span(P, "3", NOW, model="fraud")],
            since={P: NOW},
            events=[
                normal(
                    reasons.ROLLOUT_STARTED,
                    "spec.model.name changed: rolling production from models:/sentiment/3 to models:/fraud/3",
                )
            ],
        ),
        id="a rename to a model at the same version number is a change like any other",
    ),
    pytest.param(
        SERVING_2,
        {P: served("2"), C: served("3")},
        {},
        TrackChanges(
            history=[span(P, "2", T[1]), span(C, "3", NOW, reason=reasons.CANARY_STARTED)],
            since={P: T[1], C: NOW},
            events=[CANARY_STARTS],
        ),
        id="a canary that starts opens its span beside production's",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("2"), C: served("4")},
        {},
        TrackChanges(
            history=[span(P, "2", T[1]), CANARY_CLOSED, span(C, "4", NOW, reason=reasons.CANARY_UPDATED)],
            since={P: T[1], C: NOW},
            events=[normal(reasons.CANARY_UPDATED, "@canary moved: canary rolls from version 3 to 4")],
        ),
        id="a canary alias that moves closes the canary's span and opens the next",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("3")},
        {"canary": TrackDecision(target=None, pointed_at="3")},
        TrackChanges(
            history=[
                span(P, "2", T[1], NOW),
                CANARY_CLOSED,
                span(P, "3", NOW, reason=reasons.CANARY_PROMOTED),
            ],
            since={P: NOW},
            events=[PROMOTED],
        ),
        id="a promotion is told once, as CanaryPromoted on production, and closes the canary's span",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("3")},
        {"canary": TrackDecision(target=None, pointed_at="3"), "ended": ended("3", Phase.SUCCEEDED)},
        TrackChanges(
            history=[
                span(P, "2", T[1], NOW),
                CANARY_CLOSED | {"outcome": "Succeeded"},
                span(P, "3", NOW, reason=reasons.CANARY_PROMOTED),
            ],
            since={P: NOW},
            events=[PROMOTED],
        ),
        id="a canary run that succeeded keeps its outcome on the span its promotion closes",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("2")},
        {"ended": ended("3", Phase.ABORTED)},
        TrackChanges(
            history=[span(P, "2", T[1]), CANARY_CLOSED | {"outcome": "Aborted"}],
            since={P: T[1]},
            events=[normal(reasons.CANARY_REMOVED, "canary version 3 removed: its canary run ended Aborted")],
        ),
        id="an aborted canary's span keeps its outcome and its removal says why",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("2")},
        {"ended": ended("5", Phase.ABORTED)},
        TrackChanges(
            history=[span(P, "2", T[1]), CANARY_CLOSED],
            since={P: T[1]},
            events=[normal(reasons.CANARY_REMOVED, "canary version 3 removed: @canary is not set")],
        ),
        id="another version's ended run leaves no outcome on the canary span it did not close",
    ),
    pytest.param(
        WITH_CANARY_3,
        {P: served("4")},
        {"canary": TrackDecision(target=None, pointed_at="4")},
        TrackChanges(
            history=[span(P, "2", T[1], NOW), CANARY_CLOSED, span(P, "4", NOW)],
            since={P: NOW},
            events=[
                normal(reasons.ROLLOUT_STARTED, "@production moved: rolling production from 2 to 4"),
                normal(
                    reasons.CANARY_REMOVED,
                    "canary version 3 removed: @canary points at the production version",
                ),
            ],
        ),
        id="a canary that ends when production moves past it is told on its own",
    ),
    pytest.param(
        {
            "production": entry("2"),
            "canary": entry("3", phase="Aborted", replicas=0),
            "history": [span(P, "2", T[1]), CANARY_CLOSED | {"outcome": "Aborted"}],
        },
        {P: served("2"), C: served("3")},
        {},
        TrackChanges(
            history=[
                span(P, "2", T[1]),
                CANARY_CLOSED | {"outcome": "Aborted"},
                span(C, "3", NOW, reason=reasons.CANARY_STARTED),
            ],
            since={P: T[1], C: NOW},
            events=[CANARY_STARTS],
        ),
        id="an ended run's record serves nothing: a canary of its version again opens a span of its own",
    ),
]


@pytest.mark.parametrize(("previous", "now_served", "context", "expected"), CHANGES)
def test_a_pass_records_each_track_change(
    previous: dict[str, Any],
    now_served: dict[Track, ServedVersion | None],
    context: dict[str, Any],
    expected: TrackChanges,
) -> None:
    the_spec: ModelDeploymentSpec = context.get("the_spec", CANARY)
    changes = track_changes(
        spec=the_spec,
        previous=previous,
        served=now_served,
        canary=context.get("canary", NO_CANARY),
        share=SHARE,
        ended=context.get("ended"),
        now=NOW,
    )
    assert changes == expected


# --- the limits ------------------------------------------------------------------------------------

CANARY_SPANS = [span(C, "5", T[3], T[4], reason=reasons.CANARY_STARTED, outcome="Aborted")]

LIMITS = [
    pytest.param(
        {"production": entry("4", since=T[3]), "history": production_spans(4)},
        {P: served("5")},
        [
            *production_spans(4)[1:3],
            production_spans(4)[3] | {"to": NOW},
            span(P, "5", NOW),
        ],
        [production_spans(4)[0]],
        id="production over its limit drops its oldest closed span, and returns it",
    ),
    pytest.param(
        {
            "production": entry("1", since=T[0]),
            "history": [
                span(P, "1", T[0]),
                *[span(P, str(i), T[i], T[i + 1]) for i in range(2, 6)],
            ],
        },
        {P: served("1")},
        [span(P, "1", T[0]), *[span(P, str(i), T[i], T[i + 1]) for i in range(3, 6)]],
        [span(P, "2", T[2], T[3])],
        id="an open span always stays: the oldest closed span goes, wherever the open one is listed",
    ),
    pytest.param(
        {
            "production": entry("2"),
            "canary": entry("6", since=T[5]),
            "history": [
                span(P, "2", T[1]),
                CANARY_SPANS[0],
                span(C, "6", T[5], reason=reasons.CANARY_STARTED),
            ],
        },
        {P: served("2"), C: served("7")},
        [
            span(P, "2", T[1]),
            span(C, "6", T[5], NOW, reason=reasons.CANARY_STARTED),
            span(C, "7", NOW, reason=reasons.CANARY_UPDATED),
        ],
        [CANARY_SPANS[0]],
        id="a burst of canaries drops only canary spans: it never pushes out what served production",
    ),
    pytest.param(
        {"production": entry("7", since=T[7]), "history": production_spans(7)},
        {P: served("7")},
        production_spans(7)[3:],
        production_spans(7)[:3],
        id="a history over the limit loses every span over it in one pass, oldest first",
    ),
    pytest.param(
        {
            "production": entry("5", since=T[5]),
            "history": [span(P, str(i), T[i]) for i in range(1, 6)],
        },
        {P: served("5")},
        [span(P, str(i), T[i]) for i in range(2, 6)],
        [span(P, "1", T[1])],
        id="a track over its limit with no closed span (never written so) drops its oldest span",
    ),
    pytest.param(
        {"production": entry("4", since=T[3]), "history": production_spans(4)},
        {P: served("4")},
        production_spans(4),
        [],
        id="a track at its limit keeps every span and drops none",
    ),
]


@pytest.mark.parametrize(("previous", "now_served", "kept", "dropped"), LIMITS)
def test_status_keeps_the_latest_spans_of_each_track(
    previous: dict[str, Any],
    now_served: dict[Track, ServedVersion | None],
    kept: list[dict[str, Any]],
    dropped: list[dict[str, Any]],
) -> None:
    # The cases are written for these limits: four production spans, two canary spans.
    assert (HISTORY_LIMITS, HISTORY_LIMIT) == ({P: 4, C: 2}, 6)
    changes = track_changes(
        spec=CANARY, previous=previous, served=now_served, canary=NO_CANARY, share=SHARE, ended=None, now=NOW
    )
    assert (changes.history, changes.dropped) == (kept, dropped)
