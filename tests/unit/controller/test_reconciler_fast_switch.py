"""A fast move's time (version mode, spec.rollback) in the operator's metric: the pass whose plan says
a fast move ended observes its seconds in aliasroll_fast_switch_seconds, by kind, once its status is
written, as it posts the FastRollback event; a pass without one observes nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from reconciler_fakes import BODY, Cluster, deployment, run_pass

from aliasroll.controller import reconciler
from aliasroll.planning import planner
from aliasroll.planning.fleet import FastMove, MoveKind, VersionId

METRIC = "aliasroll_fast_switch_seconds"


def sample(suffix: str, kind: str) -> float:
    return REGISTRY.get_sample_value(f"{METRIC}_{suffix}", {"kind": kind}) or 0.0


def with_fast_move(monkeypatch: pytest.MonkeyPatch, move: FastMove | None) -> None:
    """The reconciler's planner, its plan saying `move` ended this pass."""
    real = planner.plan

    def planned(**given: Any) -> planner.Plan:
        return replace(real(**given), fast_move=move)

    monkeypatch.setattr(reconciler.planner, "plan", planned)


@pytest.mark.parametrize("kind", [MoveKind.ROLLBACK, MoveKind.PROMOTION])
def test_a_fast_move_that_ended_is_observed_by_kind(monkeypatch: pytest.MonkeyPatch, kind: MoveKind) -> None:
    source, target = VersionId("sentiment", "2"), VersionId("sentiment", "1")
    move = FastMove(kind=kind, source=source, target=target, seconds=0.61)
    with_fast_move(monkeypatch, move)
    count, total = sample("count", kind.value), sample("sum", kind.value)
    bucket = REGISTRY.get_sample_value(f"{METRIC}_bucket", {"kind": kind.value, "le": "1.0"}) or 0.0
    cluster = Cluster([deployment("1")])
    run_pass(cluster, BODY)
    assert cluster.status is not None, "the status was written"
    assert sample("count", kind.value) == count + 1
    assert sample("sum", kind.value) == pytest.approx(total + 0.61)
    assert REGISTRY.get_sample_value(f"{METRIC}_bucket", {"kind": kind.value, "le": "1.0"}) == bucket + 1


def test_a_pass_without_a_fast_move_observes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with_fast_move(monkeypatch, None)
    counts = {kind: sample("count", kind.value) for kind in MoveKind}
    run_pass(Cluster([deployment("1")]), BODY)
    assert {kind: sample("count", kind.value) for kind in MoveKind} == counts
