"""One named case per defect of the canary run and its records found in review (each failed on the code
before the fix), driving the real planner and reconciler. The defects fixed in other modules have their
tables beside them (under tests/unit/):

    4  read-only credentials: a refusal wakes once      controller/test_tag_writer.py
    7  pod reader counts a returning pod's lifetime      analysis/test_analysis_pods.py
    8  gatewayAPI with replicas 0                        planning/test_routers.py, test_capacity.py
    10 a webhook during a read is dropped                registry/test_poller.py, test_poller_model.py
    12 batching changes dtypes; the dependency cache     serving/test_serving_sharing.py,
                                                      serving/test_dependency_cache.py
    13 the poller's loop crashes on a leave mid-read     registry/test_poller.py, test_poller_model.py
    14 a stall that does not stay put                    planning/test_rollout_truth.py

The model-based property test over random histories of all of them is test_canary_model.py, beside this.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

from test_canary_model import T0, World
from test_canary_run import OWNER, advance, analysing, at, measured, registry, spec

from aliasroll import reasons
from aliasroll.analysis.judge import Verdict
from aliasroll.planning import canary, history, registry_writes
from aliasroll.planning.canary import AliasWrite, AnalysisResult, CanaryRun, Phase
from aliasroll.spec import Track, parse_spec


def world(**canary_fields: Any) -> World:
    w = World()
    w.spec = {
        "model": {"name": "sentiment"},
        "registry": {"trackingUri": "http://mlflow:5000", "pollInterval": "30s"},
        "replicas": 3,
        "canary": {
            "steps": [{"weight": 20, "duration": "1m"}, {"weight": 50, "duration": "1m"}],
            "analysis": {"interval": "10s", "failureLimit": 1, "errorRate": {"maxPercent": 1}},
            "promotion": "auto",
            **canary_fields,
        },
    }
    w.start_operator()
    return w


def go(w: World, seconds: float = 15, passes: int = 1) -> None:
    for _ in range(passes):
        w.pods_start()
        w.now += timedelta(seconds=seconds)
        w.registry.read()
        w.run_pass()


def until(w: World, phase: Phase, *, limit: int = 40) -> CanaryRun:
    for _ in range(limit):
        go(w)
        run = w.run()
        if run is not None and run.phase is phase:
            return run
    raise AssertionError(f"never {phase}: {w.run()}")


# 1 -------------------------------------------------------------------------------------------------


def test_1_a_human_moving_production_back_after_the_operators_move_wins() -> None:
    w = world()
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    promoting = until(w, Phase.PROMOTING)
    assert promoting.alias_write is AliasWrite.MADE
    assert w.registry.aliases["production"] == "2"
    w.registry.aliases["production"] = "1"  # the human's rollback, during production's roll
    go(w, passes=6)
    assert w.registry.aliases["production"] == "1", "the operator wrote @production again"
    assert len([x for x in w.registry.writes if x.alias == "production"]) == 1
    assert reasons.PROMOTION_CALLED_OFF in [e.reason for e in w.events.posted]


def test_1_a_called_off_promotion_stays_called_off_through_a_pause() -> None:
    """Found by the histories: the human's rollback called the promotion off (AwaitingPromotion);
    spec.suspend paused the run and, on resume, it went back to its (passed) last step and promoted
    the version a second time over the human's move."""
    w = world()
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    until(w, Phase.PROMOTING)
    w.registry.aliases["production"] = "1"
    until(w, Phase.AWAITING_PROMOTION)
    for suspend in (True, False):
        w.spec = {**w.spec, "suspend": suspend}
        w.generation += 1
        go(w, passes=4)
    assert w.registry.aliases["production"] == "1", "the operator wrote @production again"
    assert len([x for x in w.registry.writes if x.alias == "production"]) == 1
    run = w.run()
    assert run is not None
    assert run.phase is Phase.AWAITING_PROMOTION


def test_1_a_move_made_after_the_last_poll_is_not_overwritten() -> None:
    """The decision is made on a snapshot up to a poll old; the write reads the alias first."""
    w = world()
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    for _ in range(40):
        run = w.run()
        # One pass before the last step would pass: a human moves @production, unseen by the poller.
        if run is not None and run.step_index == 1 and run.phase is Phase.ANALYZING and run.read_at:
            break
        go(w)
    w.registry.aliases["production"] = "3"
    for _ in range(6):
        w.pods_start()
        w.now += timedelta(seconds=15)
        w.run_pass()  # the snapshot still says 1
    assert w.registry.aliases["production"] == "3"
    assert not [x for x in w.registry.writes if x.alias == "production"]


# 2 -------------------------------------------------------------------------------------------------


def test_2_a_step_whose_readings_all_fail_holds_with_the_previous_steps_pass() -> None:
    run = analysing(step=1, started=60, verdict=Verdict.PASSED, measured_at=at(55), window_start=at(45))
    for second in range(70, 200, 10):
        unreadable = AnalysisResult(version="3", measured_at=at(second), error="Prometheus answered 500")
        result = advance(run, second, the_spec=spec(promotion="auto"), analysis=unreadable)
        assert result.run is not None
        run = result.run
        assert run.phase is Phase.ANALYZING, run
    assert run.step_index == 1
    assert run.message.startswith("holding step 2")
    assert run.waiting_since == at(120)


def test_2_a_baseline_after_a_restart_is_no_measurement() -> None:
    run = analysing(step=1, started=60, verdict=Verdict.PASSED, measured_at=at(55), window_start=at(45))
    baseline = AnalysisResult(version="3", measured_at=at(130))
    result = advance(run, 130, the_spec=spec(promotion="auto"), analysis=baseline)
    assert result.run is not None
    assert (result.run.phase, result.run.step_index) == (Phase.ANALYZING, 1)
    assert reasons.CANARY_PROMOTING not in [e.reason for e in result.events]


# 3 -------------------------------------------------------------------------------------------------


def test_3_a_failed_measurement_during_a_registry_outage_counts_and_aborts() -> None:
    w = world()
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    until(w, Phase.ANALYZING)
    w.registry.down = True
    w.metrics.next = "failed"
    go(w, passes=3)
    run = w.run()
    assert run is not None
    assert (run.phase, run.failures) == (Phase.ABORTED, 1)
    assert reasons.CANARY_ABORTED in [e.reason for e in w.events.posted]


# 5 -------------------------------------------------------------------------------------------------


def test_5_steps_shortened_below_the_current_step_promote_or_await() -> None:
    at_three = analysing(step=2, started=0)
    three = [{"weight": 5, "duration": "1m"}, {"weight": 25, "duration": "1m"}]
    result = advance(at_three, 10, the_spec=spec(steps=three))
    assert result.run is not None
    assert result.run.phase is Phase.AWAITING_PROMOTION
    auto = advance(at_three, 10, the_spec=spec(steps=three, promotion="auto"))
    assert auto.run is not None
    assert (auto.run.phase, auto.run.alias_write) == (Phase.PROMOTING, AliasWrite.PLANNED)
    waiting = replace(at_three, step_started_at=None, phase=Phase.PROGRESSING)
    assert canary.settle(spec(steps=three), waiting, in_place=True, share="25%", now=at(5)).run is not None


def test_5_analysis_added_to_a_running_steps_only_canary_measures_it() -> None:
    no_analysis = spec(analysis=None)
    running = CanaryRun(
        version="3", phase=Phase.PROGRESSING, model="sentiment", step_started_at=at(0), promoting_from="2"
    )
    result = advance(running, 5, the_spec=spec())
    assert result.run is not None
    assert result.run.phase is Phase.ANALYZING
    assert canary.measurement_due(spec(), result.run, at(5))
    assert advance(running, 5, the_spec=no_analysis).run == running


def test_5_steps_to_weight_and_back() -> None:
    analysing_run = analysing(step=1, started=0)
    fixed = spec(steps=None, weight=20)
    to_weight = advance(analysing_run, 5, the_spec=fixed).run
    assert to_weight is not None
    assert (to_weight.phase, to_weight.step_index, to_weight.step_started_at) == (Phase.PROGRESSING, 0, None)
    settled = canary.settle(fixed, to_weight, in_place=True, share="20%", now=at(6)).run
    assert settled is not None
    assert settled.phase is Phase.AWAITING_PROMOTION
    back = advance(settled, 7, the_spec=spec()).run
    assert back is not None
    assert (back.phase, back.step_index, back.step_started_at) == (Phase.PROGRESSING, 0, None)


# 6 -------------------------------------------------------------------------------------------------


def test_6_a_held_step_asks_for_its_next_reading_not_every_second() -> None:
    held = analysing(read_at=at(300), verdict=Verdict.INCONCLUSIVE, measured_at=at(300), window_start=at(0))
    five_minutes = spec(analysis={"interval": "5m", "errorRate": {"maxPercent": 1}})
    for now in (301, 400, 550):
        assert canary.next_pass_in(five_minutes, held, at(now)) == 600 - now


# 9 -------------------------------------------------------------------------------------------------


def test_9_an_abort_is_recorded_before_its_canary_alias_goes_even_if_status_fails_once() -> None:
    w = world(onAbort="removeAlias")
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    until(w, Phase.ANALYZING)
    w.metrics.next = "failed"
    w.api.fail_status_writes = 1  # the aborting pass cannot write its status
    go(w)
    assert w.registry.aliases.get("canary") == "2", "removed before the abort was recorded"
    go(w, passes=3)
    run = w.run()
    assert run is not None
    assert run.phase is Phase.ABORTED
    assert "canary" not in w.registry.aliases
    assert w.registry.tags["2"]["aliasroll.io/canary.outcome"] == "aborted"
    assert reasons.CANARY_ABORTED in [e.reason for e in w.events.posted]


def test_9_a_canary_alias_a_human_moved_meanwhile_is_left_alone() -> None:
    w = world(onAbort="removeAlias")
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    until(w, Phase.ANALYZING)
    w.metrics.next = "failed"
    w.registry.aliases["canary"] = "3"  # after the poll: the aborting pass still sees 2
    w.pods_start()
    w.now += timedelta(seconds=15)
    w.run_pass()
    assert w.registry.aliases["canary"] == "3"


# 11 ------------------------------------------------------------------------------------------------


def test_11_a_span_dropped_from_status_is_closed_in_mlflow_by_the_pass_that_drops_it() -> None:
    previous = {
        "history": [
            {"track": "production", "model": "sentiment", "version": v, "from": f"2026-12-01T0{v}:00:00Z"}
            | ({"to": f"2026-12-01T0{int(v) + 1}:00:00Z"} if v != "5" else {})
            for v in ("1", "2", "3", "4", "5")
        ]
    }
    changes = history.track_changes(
        spec=spec(),
        previous={**previous, "production": {"version": "5", "modelUri": "models:/sentiment/5"}},
        served={Track.PRODUCTION: None},
        canary=__import__("aliasroll.planning.version_decision", fromlist=["TrackDecision"]).TrackDecision(
            target=None
        ),
        share="",
        ended=None,
        now="2026-12-01T09:00:00Z",
    )
    assert [span["version"] for span in changes.dropped] == ["1"]
    (tag,) = registry_writes.served_tags(owner=OWNER, spec=spec(), history=changes.dropped)
    assert next(iter(tag.tags.values())) == "2026-12-01T01:00:00Z to 2026-12-01T02:00:00Z"


def test_11_the_last_span_of_a_renamed_model_is_closed_in_that_model() -> None:
    renamed = parse_spec({**_raw(), "model": {"name": "sentiment-v2"}})
    spans = [
        {
            "track": "production",
            "model": "sentiment",
            "version": "4",
            "from": "2026-12-01T08:00:00Z",
            "to": "2026-12-01T09:00:00Z",
        },
        {"track": "production", "model": "sentiment-v2", "version": "1", "from": "2026-12-01T09:00:00Z"},
    ]
    writes = registry_writes.served_tags(owner=OWNER, spec=renamed, history=spans)
    assert [(w.model, w.version, next(iter(w.tags.values()))) for w in writes] == [
        ("sentiment", "4", "2026-12-01T08:00:00Z to 2026-12-01T09:00:00Z"),
        (None, "1", "2026-12-01T09:00:00Z to now (serving)"),
    ]


def test_11_a_deleted_resource_closes_its_open_spans() -> None:
    w = world()
    go(w, passes=2)
    status = w.api.status
    open_spans = [span for span in status["history"] if "to" not in span]
    assert open_spans
    assert w.reconciler is not None
    asyncio.run(w.reconciler.close_spans(w.body(), why="ModelDeployment deleted"))
    version = open_spans[0]["version"]
    (value,) = [v for k, v in w.registry.tags[version].items() if k.startswith("aliasroll.io/served/")]
    assert value.endswith("(ModelDeployment deleted)")
    assert "now (serving)" not in value
    assert value.startswith(open_spans[0]["from"])
    assert w.now > T0


def _raw() -> dict[str, Any]:
    return {
        "model": {"name": "sentiment"},
        "registry": {"trackingUri": "http://mlflow:5000"},
        "replicas": 10,
        "canary": {
            "alias": "canary",
            "steps": [{"weight": 5, "duration": "1m"}],
            "analysis": {"errorRate": {"maxPercent": 1}},
        },
    }


def test_the_world_measures_failures_per_run() -> None:
    """(The tests above trust the world's metrics source: its failed readings count per run.)"""
    result = measured(Verdict.FAILED, 10)
    assert result.measurement is not None
    assert registry().production_alias == "2"


# Found by the end-to-end adversity tests ------------------------------------------------------------


def test_a_step_started_after_its_reading_fell_due_is_measured_at_once() -> None:
    """Resumed from spec.suspend (or a later step put in place): the step's clock starts in a pass
    that did not measure, with the next reading already due; its pass comes at once, not at the
    step's end."""
    resumed = analysing(step=0, started=100, read_at=at(40))
    assert canary.next_pass_in(spec(), resumed, at(100)) == 0.0
    measured_now = replace(resumed, read_at=at(100))
    assert canary.next_pass_in(spec(), measured_now, at(100)) == 10.0


def test_an_outcome_decided_during_an_outage_is_planned_for_the_tag_writer() -> None:
    """The registry is down when the run aborts, and @canary moves before it answers again: the
    outcome tags go to the tag writer in the aborting pass (it retries them until written)."""
    w = world()
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    until(w, Phase.ANALYZING)
    w.registry.down = True
    w.metrics.next = "failed"
    go(w, passes=2)
    run = w.run()
    assert run is not None
    assert run.phase is Phase.ABORTED
    w.registry.aliases["canary"] = "3"
    w.registry.down = False
    go(w, passes=2)
    assert w.registry.tags["2"].get("aliasroll.io/canary.outcome") == "aborted"


# A reading that ends after the run reached AwaitingPromotion (readings run beside the passes) -------


def test_measurements_while_awaiting_promotion_keep_the_promotion_instruction() -> None:
    w = world(promotion="manual")
    w.registry.aliases["canary"] = "2"
    w.run_pass()
    awaiting = until(w, Phase.AWAITING_PROMOTION)
    assert awaiting.message.startswith("every step passed: move @production to version 2"), awaiting
    go(w, passes=6)  # the canary is still watched: readings keep arriving
    run = w.run()
    assert run is not None
    assert run.phase is Phase.AWAITING_PROMOTION, run
    assert run.read_at is not None
    assert run.read_at > (awaiting.read_at or T0), "no measurement was taken while awaiting"
    assert run.message == awaiting.message, "a measurement replaced what a human must do"
