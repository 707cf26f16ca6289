"""When a resource's next pass is due, and whether a pass moved its rollout on (pure).

The reconciler asks these two questions at the end of every pass; the answers are decisions like
the planner's, so they live here, tested with a table of named cases (tests/unit/planning/
test_next_pass.py):

    next_pass_in(PassEnd)      -> seconds until the next pass, if nothing wakes the resource first
    moved_on(status, before)   -> whether status says something new besides the records' state

A pass is also woken by what can change its resource (its model's poller, the watches on its
objects, pods and Secret, a canary reading that ends); the timer is for what nothing announces:
the clock of a canary step, a measurement due, and the poll of a registry under way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aliasroll import reasons
from aliasroll.planning import bake as bake_run
from aliasroll.planning import canary as canary_run
from aliasroll.planning import health
from aliasroll.spec import ModelDeploymentSpec

# A canary step that ends, or a measurement that is due, brings the next pass forward, never closer
# than this to the last one.
MIN_CANARY_PASS_SECONDS = 1.0
# A resource at rest (health.at_rest) is woken by what can change it (its model's poller, watches);
# its own timer is only a safety net, rare enough that a thousand of them cost the operator
# little (at a 10 s poll, a pass of every resource every interval kept a core a third busy).
AT_REST_PASS_SECONDS = 300.0


@dataclass(frozen=True)
class PassEnd:
    """What a pass that wrote its status leaves for the timing of the next one."""

    spec: ModelDeploymentSpec
    status: Mapping[str, Any]  # the status written
    now: datetime  # the pass's clock
    registry_answered: bool  # False: the poller retries it and wakes the resource on a change
    canary_due_in: float | None  # the plan's: seconds until a canary step ends or a reading is due
    reading_under_way: bool = False  # a canary reading of this resource runs in the background
    bake_reading_under_way: bool = False  # a bake reading of it does (spec.rollback.bake)


def next_pass_in(end: PassEnd) -> float:
    """Every poll interval while anything is under way; at rest, only the safety net; sooner when
    the canary's clock says so. A reading under way wakes the resource when it ends, so a reading
    the plan counted as due now is counted from now instead (the one after it is due an interval
    on), and no pass is spent waiting for it."""
    next_in = end.spec.registry.poll_seconds
    if end.registry_answered and health.at_rest(end.status):
        next_in = max(next_in, AT_REST_PASS_SECONDS)
    ahead = end.canary_due_in
    if ahead is not None and (end.reading_under_way or end.bake_reading_under_way):
        ahead = _without_readings_under_way(end)
    if ahead is not None:
        next_in = max(MIN_CANARY_PASS_SECONDS, min(next_in, ahead))
    return next_in


def _without_readings_under_way(end: PassEnd) -> float | None:
    """The canary's and the bake's next events, a reading under way counted as taken now (it wakes
    the resource when it ends; the one after it is due an interval on)."""
    due: list[float] = []
    run = canary_run.from_status(end.status.get("canary"))
    if run is not None:
        run = replace(run, read_at=end.now) if end.reading_under_way else run
        due += [found] if (found := canary_run.next_pass_in(end.spec, run, end.now)) is not None else []
    bake = bake_run.from_status(end.status.get(bake_run.KEY))
    if bake is not None:
        bake = replace(bake, read_at=end.now) if end.bake_reading_under_way else bake
        due += [found] if (found := bake_run.next_pass_in(end.spec, bake, end.now)) is not None else []
    return min(due) if due else None


def moved_on(status: Mapping[str, Any], before: Mapping[str, Any]) -> bool:
    """Whether status says something new besides the state of the records (a rollout moved on):
    the tag writer holds its writes back while passes move rollouts on in a burst."""

    def rest(of: Mapping[str, Any]) -> dict[str, Any]:
        found = of.get("conditions") or ()
        return {**of, "conditions": [c for c in found if c.get("type") != reasons.RECORDED]}

    return rest(status) != rest(before)
