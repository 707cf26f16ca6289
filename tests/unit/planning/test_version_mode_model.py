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

from aliasroll.spec import ModelDeploymentSpec, RollbackSpec, Track

REPLICAS = 3
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
        self.steps: list[str] = []

    def spec(self) -> ModelDeploymentSpec:
        return replace(
            spec(
                replicas=REPLICAS, canary={"alias": "canary", "weight": 34}, traffic={"router": self.router}
            ),
            rollback=RollbackSpec(window_seconds=self.window, max_warm=self.max_warm, floor=self.floor),
        )

    def trail(self) -> str:
        return "\n".join(self.steps[-25:])

    def reconcile(self) -> None:
        before = {pod for d in self.cluster.deployments.values() for pod in d.pods_names()}
        warm_target = self.production in self.warm_versions()
        self.cluster.reconcile(self.spec(), view(self.production, self.canary))
        after = {pod for d in self.cluster.deployments.values() for pod in d.pods_names()}
        self.steps.append(
            f"pass @production={self.production} @canary={self.canary} -> serving {self.cluster.serving()}"
        )
        if warm_target and self.floor is None:
            assert after <= before, "a move back to a warm version created pods:\n" + self.trail()
        if self.cluster.serving().get(self.production, 0) >= REPLICAS:
            self.served = True

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
        if set(serving) == {self.production} and serving[self.production] >= REPLICAS and self.canary is None:
            assert self.cluster.status["production"]["version"] == self.production, self.trail()

    def teardown(self) -> None:
        # Given pods that start and passes, every history ends with @production alone serving.
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
    ):
        assert SEEN[reached] > 0, (reached, SEEN)
