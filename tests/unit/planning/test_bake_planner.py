"""The bake window (spec.rollback.bake) through the planner, over the small cluster of version mode.

A move of @production forward starts a bake once the version it left is warm; the bake's readings
are handed to the planner as the reconciler would (an AnalysisResult per pass); a failed bake plans
the move of @production back (expect: the baked version), and once the registry says so, version
mode rolls back by the fast path: no pod is created.
"""

from __future__ import annotations

from dataclasses import replace

from builders import spec, view
from version_cluster import VersionCluster

from aliasroll import reasons
from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.window import Window
from aliasroll.errors import RegistryUnavailable
from aliasroll.planning import bake as bake_run
from aliasroll.planning.canary import AliasWrite, AnalysisResult
from aliasroll.planning.planner import Plan, with_alias_write
from aliasroll.planning.registry_writes import AliasChange, TagVersion
from aliasroll.spec import AnalysisSpec, BakeSpec, ModelDeploymentSpec, RollbackSpec

REPLICAS = 3
INTERVAL = 30
DURATION = 600
RULES = AnalysisSpec(interval_seconds=INTERVAL, min_requests=20, failure_limit=2, max_error_percent=1.0)


def bake_spec() -> ModelDeploymentSpec:
    bake = BakeSpec(duration_seconds=DURATION, analysis=RULES)
    return replace(spec(replicas=REPLICAS), rollback=RollbackSpec(window_seconds=1800, bake=bake))


def reading(cluster: VersionCluster, version: str, *, errors: int = 0, requests: int = 100) -> AnalysisResult:
    """A judged reading of the baked version alone, as the analyzer hands it (no production)."""
    limits = Limits(min_canary_requests=RULES.min_requests, max_error_percent=RULES.max_error_percent)
    measured = judge(limits, canary=Window(requests=requests, errors=errors), production=Window())
    return AnalysisResult(version=version, measured_at=cluster.now, measurement=measured)


def converge(cluster: VersionCluster, production: str, passes: int = 6) -> Plan:
    result = cluster.reconcile(bake_spec(), view(production))
    for _ in range(passes):
        cluster.start()
        result = cluster.reconcile(bake_spec(), view(production))
        assert sum(cluster.serving().values()) >= REPLICAS
    return result


def reasons_of(cluster: VersionCluster) -> list[str]:
    return [reason for reason, _ in cluster.events]


def baking(cluster: VersionCluster) -> VersionCluster:
    """v1 served, @production moved to v2, which now takes every request: the bake's clock runs."""
    converge(cluster, "1")
    moved = cluster.reconcile(bake_spec(), view("2"))
    assert reasons.BAKE_STARTED in [event.reason for event in moved.events]
    assert cluster.status["bake"]["phase"] == "Baking"
    assert "startedAt" not in cluster.status["bake"]  # v1 still takes requests
    result = converge(cluster, "2")
    bake = cluster.status["bake"]
    assert (bake["version"], bake["previous"], bake["phase"]) == ("2", "1", "Baking")
    assert "startedAt" in bake
    assert "until" in bake
    assert result.next_in == 0  # the first reading is due
    return cluster


def test_a_move_forward_from_a_version_kept_warm_starts_a_bake() -> None:
    cluster = baking(VersionCluster())
    assert cluster.serving() == {"2": REPLICAS}
    assert cluster.status["warm"][0]["version"] == "1"
    assert reasons_of(cluster).count(reasons.BAKE_STARTED) == 1


def test_a_first_deploy_and_a_plain_rollback_start_no_bake() -> None:
    cluster = VersionCluster()
    converge(cluster, "1")
    assert "bake" not in cluster.status
    converge(cluster, "2")
    cluster.later(5)
    converge(cluster, "1")  # back to the warm v1: a rollback, not a move forward
    assert cluster.status["bake"]["version"] == "2"
    assert cluster.status["bake"]["phase"] == "Superseded"
    assert reasons_of(cluster).count(reasons.BAKE_STARTED) == 1


def test_a_failed_bake_moves_production_back_and_the_rollback_is_fast() -> None:
    cluster = baking(VersionCluster())
    the_spec = bake_spec()
    first = cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2", errors=9))
    assert cluster.status["bake"]["failures"] == 1
    assert cluster.status["bake"]["phase"] == "Baking"
    assert not [write for write in first.writes if isinstance(write, AliasChange)]
    assert first.next_in == INTERVAL
    cluster.later(INTERVAL)
    failed = cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2", errors=9))
    bake = cluster.status["bake"]
    assert (bake["phase"], bake["failures"], bake["aliasWrite"]) == ("Failed", 2, "Planned")
    (change,) = [write for write in failed.writes if isinstance(write, AliasChange)]
    assert (change.alias, change.expect, change.to, change.record) == ("production", "2", "1", "bake")
    assert change.evidence is not None
    assert change.evidence.tags["aliasroll.io/bake.outcome"] == "failed"
    failed_event = next(msg for reason, msg in cluster.events if reason == reasons.BAKE_FAILED)
    assert "error rate 9.00% above its bound 1.00%" in failed_event
    # The reconciler makes the change (Attempted, then Made) and the registry says so next pass.
    cluster.status = with_alias_write(cluster.status, "2", AliasWrite.MADE, record="bake")
    assert cluster.status["bake"]["aliasWrite"] == "Made"
    pods_before = {name for d in cluster.deployments.values() for name in d.pods_names()}
    cluster.later(1)
    back = cluster.reconcile(the_spec, view("1"))
    assert not [write for write in back.writes if isinstance(write, AliasChange)]
    assert cluster.serving()["1"] == REPLICAS  # the warm pods, routed at once
    cluster.later(1)
    cluster.reconcile(the_spec, view("1"))
    assert cluster.serving() == {"1": REPLICAS}
    assert {name for d in cluster.deployments.values() for name in d.pods_names()} == pods_before
    assert reasons.FAST_ROLLBACK in reasons_of(cluster)
    assert cluster.status["bake"]["phase"] == "Failed"  # the record stays; no bake of the rollback
    assert reasons_of(cluster).count(reasons.BAKE_STARTED) == 1


def test_a_failed_bake_never_writes_over_a_move_made_meanwhile() -> None:
    cluster = baking(VersionCluster())
    the_spec = bake_spec()
    cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2", errors=9))
    cluster.later(INTERVAL)
    cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2", errors=9))
    assert cluster.status["bake"]["aliasWrite"] == "Planned"
    # Before the write was made, a human moved @production to v3: no write is planned any more.
    moved = cluster.reconcile(the_spec, view("3"))
    assert not [write for write in moved.writes if isinstance(write, AliasChange)]
    assert "aliasWrite" not in cluster.status["bake"]
    assert "moved to version 3 meanwhile" in cluster.status["bake"]["message"]


def test_a_human_move_during_the_bake_supersedes_it() -> None:
    cluster = baking(VersionCluster())
    the_spec = bake_spec()
    cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2", errors=9))
    cluster.later(5)
    moved = cluster.reconcile(the_spec, view("1"))  # a human's rollback, before the bake failed
    assert cluster.status["bake"]["phase"] == "Superseded"
    assert reasons.BAKE_SUPERSEDED in [event.reason for event in moved.events]
    assert not [write for write in moved.writes if isinstance(write, AliasChange)]
    # A reading of v2 arriving afterwards changes nothing.
    cluster.later(INTERVAL)
    late = cluster.reconcile(the_spec, view("1"), bake_analysis=reading(cluster, "2", errors=9))
    assert cluster.status["bake"]["phase"] == "Superseded"
    assert not [write for write in late.writes if isinstance(write, AliasChange)]


def test_a_bake_that_runs_its_duration_passes_and_is_kept_as_the_record() -> None:
    cluster = baking(VersionCluster())
    the_spec = bake_spec()
    for _ in range(DURATION // INTERVAL):
        result = cluster.reconcile(the_spec, view("2"), bake_analysis=reading(cluster, "2"))
        assert result.next_in is not None
        assert result.next_in <= INTERVAL
        cluster.later(INTERVAL)
    cluster.reconcile(the_spec, view("2"))
    bake = cluster.status["bake"]
    assert bake["phase"] == "Passed", bake
    assert bake["verdict"] == "Passed"
    assert reasons.BAKE_PASSED in reasons_of(cluster)
    done = cluster.reconcile(the_spec, view("2"))
    tags = [write for write in done.writes if isinstance(write, TagVersion) and write.version == "2"]
    assert any(tag.tags.get("aliasroll.io/bake.outcome") == "passed" for tag in tags)
    assert not [write for write in done.writes if isinstance(write, AliasChange)]
    assert cluster.status["bake"]["phase"] == "Passed"  # kept until the next bake starts
    # The next move forward starts the next bake, which replaces the record.
    converge(cluster, "3")
    assert (cluster.status["bake"]["version"], cluster.status["bake"]["previous"]) == ("3", "2")


def test_a_bake_holds_while_the_registry_does_not_answer() -> None:
    cluster = baking(VersionCluster())
    the_spec = bake_spec()
    down = view(error=RegistryUnavailable("mlflow is down"))
    cluster.reconcile(the_spec, down, bake_analysis=reading(cluster, "2", errors=9))
    cluster.later(INTERVAL)
    failed = cluster.reconcile(the_spec, down, bake_analysis=reading(cluster, "2", errors=9))
    assert cluster.status["bake"]["phase"] == "Failed"  # measured and failed during the outage
    assert not [write for write in failed.writes if isinstance(write, AliasChange)]  # no answer: no write
    cluster.later(DURATION)
    cluster.reconcile(the_spec, down)
    back = cluster.reconcile(the_spec, view("2"))
    (change,) = [write for write in back.writes if isinstance(write, AliasChange)]
    assert (change.expect, change.to) == ("2", "1")


def test_a_bake_passes_only_on_an_answer_that_production_still_names_it() -> None:
    cluster = baking(VersionCluster())
    cluster.later(DURATION + 1)
    cluster.reconcile(bake_spec(), view(error=RegistryUnavailable("mlflow is down")))
    assert cluster.status["bake"]["phase"] == "Baking"
    cluster.reconcile(bake_spec(), view("2"))
    assert cluster.status["bake"]["phase"] == "Passed"
    assert "no conclusive measurement" in cluster.status["bake"]["message"]


def test_status_bake_reads_back_as_it_was_written() -> None:
    cluster = baking(VersionCluster())
    cluster.reconcile(bake_spec(), view("2"), bake_analysis=reading(cluster, "2", errors=9))
    found = bake_run.from_status(cluster.status["bake"])
    assert found is not None
    assert bake_run.to_status(found, bake_spec()) == cluster.status["bake"]
