"""Version mode through the whole planner, over random histories (a model-based property test).

planning/fleet.py has its own property test of the decision; this one runs the planner itself, pass
by pass, over the small cluster of version_cluster.py: human alias moves (forward, back to a warm
version, back and forth), pods that start some at a time, time passing (windows end), the window
and maxWarm edited, a pass read back from status alone (a restart), and track Deployments from before
spec.rollback. After every pass:

- capacity: once a version served, Ready pods never fall below spec.replicas;
- routing: only the version @production names, or one leaving it that still carries pods
  @production's do not, takes requests; a warm version never does;
- status tells the truth: status.production is @production's version once its pods carry every
  request, status.warm lists exactly the versions kept and not routed, at most maxWarm;
- no pod is created by a move back to a warm version at full size;
- a bake (spec.rollback.bake; readings that pass, fail, say nothing or cannot be read, a registry
  that stops answering) never writes @production unless its failures reached failureLimit and
  @production still names the baked version, and then only back to the version it left;
- and every history ends, given pods that start and passes, with @production alone serving.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

import pytest
from builders import spec, view
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from version_cluster import VersionCluster

from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.window import Window
from aliasroll.errors import RegistryUnavailable
from aliasroll.planning.canary import AliasWrite, AnalysisResult
from aliasroll.planning.planner import Plan, with_alias_write
from aliasroll.planning.registry_writes import AliasChange
from aliasroll.spec import AnalysisSpec, BakeSpec, ModelDeploymentSpec, RollbackSpec, Track

REPLICAS = 3
RULES = AnalysisSpec(interval_seconds=30, min_requests=20, failure_limit=2, max_error_percent=1.0)
READINGS = {"pass": (100, 0), "fail": (100, 9), "inconclusive": (5, 0)}
FAILING = frozenset({"3", "4"})  # the versions whose readings fail (too many errors)
SEEN: Counter[str] = Counter()


class VersionHistories(RuleBasedStateMachine):
    router = "replicas"

    def __init__(self) -> None:
        super().__init__()
        self.cluster = VersionCluster()
        self.production = "1"
        self.canary: str | None = None
        self.window = 1800
        self.max_warm = 1
        self.floor: int | None = None
        self.served = False
        self.registry_down = False
        self.seen_canary: str | None = None  # @canary as the operator last read it
        self.steps: list[str] = []

    def spec(self) -> ModelDeploymentSpec:
        return replace(
            spec(
                replicas=REPLICAS, canary={"alias": "canary", "weight": 34}, traffic={"router": self.router}
            ),
            rollback=RollbackSpec(
                window_seconds=self.window,
                max_warm=self.max_warm,
                floor=self.floor,
                bake=BakeSpec(duration_seconds=300, analysis=RULES),
            ),
        )

    def trail(self) -> str:
        return "\n".join(self.steps[-25:])

    def reconcile(self, bake_analysis: AnalysisResult | None = None) -> None:
        before = {pod for d in self.cluster.deployments.values() for pod in d.pods_names()}
        # (A canary the operator reads in the same pass, after an outage, starts pods of its own.)
        warm_target = self.production in self.warm_versions() and self.canary == self.seen_canary
        warm_target = warm_target and not self.registry_down
        answer = (
            view(error=RegistryUnavailable("down"))
            if self.registry_down
            else view(self.production, self.canary)
        )
        result = self.cluster.reconcile(self.spec(), answer, bake_analysis=bake_analysis)
        self.seen_canary = self.seen_canary if self.registry_down else self.canary
        self.bake_writes(result)
        after = {pod for d in self.cluster.deployments.values() for pod in d.pods_names()}
        self.steps.append(
            f"pass @production={self.production} @canary={self.canary} -> serving {self.cluster.serving()}"
        )
        if warm_target and self.floor is None:
            assert after <= before, "a move back to a warm version created pods:\n" + self.trail()
        if self.cluster.serving().get(self.production, 0) >= REPLICAS:
            self.served = True

    def bake_writes(self, result: Plan) -> None:
        """The bake's alias change, checked, then made as the reconciler makes it (only while
        @production names what it expects)."""
        bake = self.cluster.status.get("bake") or {}
        SEEN.update(f"bake {bake['phase']}" for _ in (1,) if bake)
        for change in result.writes:
            if not isinstance(change, AliasChange) or change.record != "bake":
                continue
            assert not self.registry_down, "a bake wrote without a registry answer:\n" + self.trail()
            assert bake["phase"] == "Failed", self.trail()
            assert bake["failures"] >= RULES.failure_limit, self.trail()
            assert change.expect == bake["version"] == self.production, self.trail()
            assert change.to == bake["previous"], self.trail()
            self.cluster.status = with_alias_write(
                self.cluster.status, change.run, AliasWrite.MADE, record="bake"
            )
            self.production = change.to
            self.steps.append(f"the failed bake moved @production back to {change.to}")
            SEEN["a failed bake moved @production back"] += 1
            self.reconcile()  # the registry's answer wakes the resource: the fast rollback, checked

    @rule(kind=st.sampled_from(["readings", "readings", "inconclusive", "error", "registry flaps"]))
    def measure(self, kind: str) -> None:
        """Bake readings of the version status.bake names, as the analyzer hands them to passes: once
        every pod runs, two an interval apart (versions 3 and 4 fail theirs); one that says
        nothing or could not be read; or the registry stops answering (or answers again)."""
        if kind == "registry flaps":
            self.registry_down = not self.registry_down
            self.steps.append(
                "the registry " + ("stops answering" if self.registry_down else "answers again")
            )
            self.reconcile()
            return
        if kind == "readings":  # the new version's pods start, and take every request: the clock runs
            self.cluster.start()
            self.steps.append("every pod passes its probe")
            self.reconcile()
        for _ in range(2 if kind == "readings" else 1):
            self.read(kind)

    def read(self, kind: str) -> None:
        version = (self.cluster.status.get("bake") or {}).get("version", self.production)
        now = self.cluster.now
        if kind == "readings":
            kind = "fail" if version in FAILING else "pass"
        if kind == "error":
            result = AnalysisResult(version=version, measured_at=now, error="no pod answered")
        else:
            requests, errors = READINGS[kind]
            limits = Limits(min_canary_requests=RULES.min_requests, max_error_percent=RULES.max_error_percent)
            measured = judge(limits, canary=Window(requests=requests, errors=errors), production=Window())
            result = AnalysisResult(version=version, measured_at=now, measurement=measured)
        self.steps.append(f"a bake reading of version {version}: {kind}")
        self.reconcile(bake_analysis=result)
        self.cluster.later(30)

    def warm_versions(self) -> set[str]:
        return {entry["version"] for entry in self.cluster.status.get("warm", ()) if not entry.get("routed")}

    @rule(version=st.sampled_from(["1", "2", "3", "4"]))
    def move(self, version: str) -> None:
        if version in self.warm_versions():
            SEEN["moved back to a warm version"] += 1
        self.production = version
        self.steps.append(f"@production -> {version}")
        self.reconcile()

    @rule(version=st.sampled_from([None, "2", "3", "4"]))
    def move_canary(self, version: str | None) -> None:
        if version is not None and version not in (self.canary, self.production):
            SEEN["canary started"] += 1
        self.canary = version
        self.steps.append(f"@canary -> {version}")
        self.reconcile()

    @rule(count=st.integers(min_value=1, max_value=REPLICAS * 2))
    def start_pods(self, count: int) -> None:
        self.cluster.start(count)
        self.steps.append(f"{count} pods pass their probe")
        self.reconcile()

    @rule(seconds=st.sampled_from([1, 30, 600, 2000]))
    def later(self, seconds: int) -> None:
        self.cluster.later(seconds)
        self.steps.append(f"{seconds}s later")
        had = set(self.cluster.deployments)
        self.reconcile()
        if had - set(self.cluster.deployments):
            SEEN["a version went"] += 1

    @rule(
        window=st.sampled_from([0, 600, 1800]),
        max_warm=st.integers(1, 3),
        floor=st.sampled_from([None, 1, 2]),
    )
    def edit(self, window: int, max_warm: int, floor: int | None) -> None:
        self.window, self.max_warm, self.floor = window, max_warm, floor
        self.steps.append(f"spec.rollback window={window} maxWarm={max_warm} floor={floor}")
        self.reconcile()

    @precondition(lambda self: not self.cluster.deployments)
    @rule(version=st.sampled_from(["1", "2"]))
    def tracks_from_before(self, version: str) -> None:
        """The resource ran in the track model before spec.rollback was set."""
        self.cluster.legacy_track(Track.PRODUCTION, version, REPLICAS)
        self.cluster.status = {
            "production": {
                "version": version,
                "modelUri": f"models:/sentiment/{version}",
                "since": "2026-11-23T11:00:00Z",
            }
        }
        self.served = True
        SEEN["tracks from before"] += 1
        self.steps.append(f"track Deployment of version {version} from before")
        self.reconcile()

    @invariant()
    def capacity(self) -> None:
        if self.served:
            total = sum(self.cluster.serving().values())
            assert total >= REPLICAS, f"{total} Ready pods of {REPLICAS}:\n" + self.trail()

    @invariant()
    def only_production_or_leaving_serve(self) -> None:
        assert not self.cluster.warm_serving(), "a warm version takes requests:\n" + self.trail()
        if self.cluster.route is not None:
            weighted = {version for version, weight in self.cluster.route.items() if weight}
            routed = {d.version for d in self.cluster.deployments.values() if d.role != "warm"}
            assert weighted <= routed, f"the route weights a warm version: {weighted}\n" + self.trail()
        listed = [entry["version"] for entry in self.cluster.status.get("warm", ()) if "until" in entry]
        assert len(listed) <= self.max_warm, self.trail()

    @invariant()
    def status_tells_what_serves(self) -> None:
        serving = self.cluster.serving()
        if self.registry_down:
            return  # the operator does not see a move made meanwhile
        if set(serving) == {self.production} and serving[self.production] >= REPLICAS and self.canary is None:
            assert self.cluster.status["production"]["version"] == self.production, self.trail()

    def teardown(self) -> None:
        # Given pods that start and passes, every history ends with @production alone serving.
        self.registry_down = False
        for _ in range(6):
            self.cluster.start()
            self.reconcile()
        serving = self.cluster.serving()
        last = self.cluster.status.get("lastCanary") or {}
        ended = last.get("version") == self.canary and last.get("phase") in ("Aborted", "Promoted")
        if self.canary in (None, self.production) or ended:
            assert serving == {self.production: REPLICAS}, f"did not settle: {serving}\n" + self.trail()
        else:
            assert set(serving) == {self.production, self.canary}, f"{serving}\n" + self.trail()
            # The replicas router splits spec.replicas; the gatewayAPI router keeps production whole.
            production_side = (
                serving[self.production] if self.router == "gatewayAPI" else sum(serving.values())
            )
            assert production_side == REPLICAS, f"{serving}\n" + self.trail()
        SEEN["settled"] += 1


EXPLORE = os.environ.get("ALIASROLL_VERSION_HISTORIES")
HISTORIES = settings(
    max_examples=int(EXPLORE or "200"),
    derandomize=EXPLORE is None,
    stateful_step_count=30,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class GatewayHistories(VersionHistories):
    """The same histories with the gatewayAPI router: what takes requests is what the route weights."""

    router = "gatewayAPI"


@pytest.mark.parametrize("machine", [VersionHistories, GatewayHistories], ids=["replicas", "gatewayAPI"])
def test_version_mode_histories(machine: type[VersionHistories]) -> None:
    SEEN.clear()
    run_state_machine_as_test(machine, settings=HISTORIES)
    print("\nreached:", dict(sorted(SEEN.items())))
    for reached in (
        "moved back to a warm version",
        "a version went",
        "tracks from before",
        "canary started",
        "settled",
        "bake Baking",
        "bake Passed",
        "bake Superseded",
        "a failed bake moved @production back",
    ):
        assert SEEN[reached] > 0, (reached, SEEN)
