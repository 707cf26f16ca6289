"""The capacity invariant: ready pods across both tracks never drop below what the user asked for.

First the rule itself, transition by transition (a table); then the whole planner driven through
random sequences of user actions (canary start, weight up and down, canary end, promotion, rollback,
roll forward, replica changes), with pods that take random times to become ready, on a small
simulation of the Deployment controller. After every step the simulated cluster must hold the
invariant, and once the actions stop it must converge to Ready.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from builders import NOW, OWNER, spec, view
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aliasroll import reasons
from aliasroll.planning.capacity import Running, replicas_now
from aliasroll.planning.observed import ObservedTrack
from aliasroll.planning.planner import plan
from aliasroll.planning.state import ChildRef, ObservedState, ObservedWorkload
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import Track

P, C = Track.PRODUCTION, Track.CANARY

RULE_CASES = [
    # (name, targets, running {track: (replicas, available)}, hold) -> replicas this pass
    ("canary starts: production waits for canary pods", {P: 8, C: 2}, {P: (10, 10)}, (), {P: 10, C: 2}),
    ("one canary pod up: production gives up one", {P: 8, C: 2}, {P: (10, 10), C: (2, 1)}, (), {P: 9, C: 2}),
    ("canary up: production at its share", {P: 8, C: 2}, {P: (10, 10), C: (2, 2)}, (), {P: 8, C: 2}),
    ("weight up: canary grows first", {P: 5, C: 5}, {P: (8, 8), C: (2, 2)}, (), {P: 8, C: 5}),
    ("weight down: canary waits for production", {P: 8, C: 2}, {P: (5, 5), C: (5, 5)}, (), {P: 8, C: 5}),
    ("weight down, 2 new production pods up", {P: 8, C: 2}, {P: (8, 7), C: (5, 5)}, (), {P: 8, C: 3}),
    ("canary ends: kept while production grows", {P: 10}, {P: (8, 8), C: (2, 2)}, (), {P: 10, C: 2}),
    ("canary ends: gone once production carries all", {P: 10}, {P: (10, 10), C: (2, 2)}, (), {P: 10}),
    ("canary ends but held for a promotion", {P: 10}, {P: (10, 10), C: (2, 2)}, (C,), {P: 10, C: 2}),
    ("scale down: straight to the new total", {P: 3, C: 1}, {P: (8, 8), C: (2, 2)}, (), {P: 3, C: 1}),
    ("scale up: both grow at once", {P: 8, C: 2}, {P: (3, 3), C: (1, 1)}, (), {P: 8, C: 2}),
    ("a shrinking track never grows back", {P: 8, C: 2}, {P: (9, 9), C: (3, 0)}, (), {P: 9, C: 2}),
    (
        "weight 100: production goes as the canary comes",
        {P: 0, C: 4},
        {P: (4, 4), C: (4, 1)},
        (),
        {P: 3, C: 4},
    ),
]


@pytest.mark.parametrize(
    ("name", "targets", "running", "hold", "expected"), RULE_CASES, ids=[case[0] for case in RULE_CASES]
)
def test_replicas_now(
    name: str,
    targets: dict[Track, int],
    running: dict[Track, tuple[int, int]],
    hold: tuple[Track, ...],
    expected: dict[Track, int],
) -> None:
    result = replicas_now(
        targets=targets,
        running={track: Running(replicas=r, available=a) for track, (r, a) in running.items()},
        hold=frozenset(hold),
    )
    assert result == expected


# The simulation.


@dataclass
class Pod:
    version: str
    ready_in: int  # steps until ready; 0: ready

    @property
    def ready(self) -> bool:
        return self.ready_in <= 0


@dataclass
class SimDeployment:
    """A Deployment as the controller rolls it: RollingUpdate, maxSurge 25%, maxUnavailable 0."""

    replicas: int
    version: str
    pods: list[Pod] = field(default_factory=list)

    def reconcile(self, delays: Delays) -> None:
        new = [pod for pod in self.pods if pod.version == self.version]
        old = [pod for pod in self.pods if pod.version != self.version]
        surge = max(1, math.ceil(self.replicas * 0.25))
        # Scale-down of the current version is immediate (unready pods go first).
        excess = len(new) - self.replicas
        if excess > 0:
            new.sort(key=lambda pod: pod.ready)
            new = new[excess:]
        while len(new) < self.replicas and len(new) + len(old) < self.replicas + surge:
            new.append(Pod(self.version, delays.next()))
        # Old pods go only while the ready ones left still cover the replicas asked for.
        old.sort(key=lambda pod: pod.ready)
        while old and (not old[0].ready or self.ready_count(new + old) - 1 >= self.replicas):
            old.pop(0)
        self.pods = new + old

    @staticmethod
    def ready_count(pods: list[Pod]) -> int:
        return sum(pod.ready for pod in pods)

    def observed(self, track: Track) -> ObservedWorkload:
        """As kube/observe.py reduces it: `available` counts the pinned version's pods only, while
        every ready pod of the track serves (`serving`)."""
        new = [pod for pod in self.pods if pod.version == self.version]
        rolled_out = len(new) >= self.replicas and len(self.pods) == len(new) and all(p.ready for p in new)
        return ObservedTrack(
            name=f"sentiment-{track.value}",
            track=track,
            model="sentiment",
            version=self.version,
            replicas=self.replicas,
            available=self.ready_count(new),
            rolled_out=rolled_out,
            serving=self.ready_count(self.pods),
        )


class Delays:
    """Pod readiness delays, cycled from what hypothesis drew."""

    def __init__(self, values: list[int]) -> None:
        self.values, self.index = values, 0

    def next(self) -> int:
        value = self.values[self.index % len(self.values)]
        self.index += 1
        return value


@dataclass
class Scenario:
    router: str
    replicas: int
    weight: int
    production: str = "1"
    canary: str | None = None
    latest: int = 1  # versions registered so far
    previous_production: str | None = None

    def act(self, action: tuple[str, int]) -> None:
        kind, value = action
        if kind == "canary":
            self.latest += 1
            self.canary = str(self.latest)
        elif kind == "weight":
            self.weight = value
        elif kind == "uncanary":
            self.canary = None
        elif kind == "promote" and self.canary is not None:
            self.previous_production, self.production = self.production, self.canary
        elif kind == "rollback" and self.previous_production is not None:
            self.production, self.previous_production = self.previous_production, self.production
        elif kind == "rollout":
            self.latest += 1
            self.previous_production, self.production = self.production, str(self.latest)
        elif kind == "replicas":
            self.replicas = value

    def spec(self) -> Any:
        return spec(
            replicas=self.replicas,
            canary={"alias": "canary", "weight": self.weight},
            traffic={"router": self.router},
        )


class Cluster:
    def __init__(self, delays: Delays) -> None:
        self.deployments: dict[Track, SimDeployment] = {}
        self.delays = delays
        self.status: dict[str, Any] = {}
        self.last_plan: Any = None

    def observed(self) -> ObservedState:
        return ObservedState(
            workloads={track: d.observed(track) for track, d in self.deployments.items()},
            children=tuple(
                ChildRef("apps/v1", "Deployment", f"sentiment-{track.value}") for track in self.deployments
            ),
        )

    def ready(self) -> int:
        return sum(d.ready_count(d.pods) for d in self.deployments.values())

    def ready_as_asked(self) -> int:
        """Ready pods without a rollout's surge: what each Deployment was asked for, at most. A total
        reached only with a surge pod is not the capacity asked for yet."""
        return sum(min(d.ready_count(d.pods), d.replicas) for d in self.deployments.values())

    def available(self, track: Track) -> int:
        deployment = self.deployments.get(track)
        return deployment.ready_count(deployment.pods) if deployment else 0

    def reconcile_pass(self, scenario: Scenario) -> None:
        result = plan(
            owner=OWNER,
            spec=scenario.spec(),
            view=view(scenario.production, scenario.canary),
            observed=self.observed(),
            previous_status=self.status,
            now=NOW,
            defaults=WorkloadDefaults(image="serving:test"),
        )
        for obj in result.objects:
            if obj["kind"] != "Deployment":
                continue
            track = Track(obj["metadata"]["labels"]["aliasroll.io/track"])
            version = obj["metadata"]["labels"]["aliasroll.io/model-version"]
            current = self.deployments.setdefault(track, SimDeployment(replicas=0, version=version))
            current.replicas, current.version = obj["spec"]["replicas"], version
        for child in result.prune:
            if child.kind == "Deployment":
                self.deployments.pop(Track(child.name.removeprefix("sentiment-")), None)
        self.status, self.last_plan = result.status, result

    def controllers(self) -> None:
        for deployment in self.deployments.values():
            deployment.reconcile(self.delays)

    def tick(self) -> None:
        for deployment in self.deployments.values():
            for pod in deployment.pods:
                pod.ready_in -= 1


ACTIONS = st.one_of(
    st.tuples(st.just("canary"), st.just(0)),
    st.tuples(st.just("weight"), st.sampled_from([0, 1, 5, 20, 50, 80, 100])),
    st.tuples(st.just("uncanary"), st.just(0)),
    st.tuples(st.just("promote"), st.just(0)),
    st.tuples(st.just("rollback"), st.just(0)),
    st.tuples(st.just("rollout"), st.just(0)),
    st.tuples(st.just("replicas"), st.integers(0, 8)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    router=st.sampled_from(["replicas", "gatewayAPI"]),
    replicas=st.integers(1, 8),
    weight=st.sampled_from([0, 10, 20, 50, 100]),
    actions=st.lists(st.tuples(ACTIONS, st.integers(0, 6)), min_size=1, max_size=6),
    delays=st.lists(st.integers(0, 3), min_size=1, max_size=12),
)
def test_ready_pods_never_drop_below_what_was_asked(
    router: str, replicas: int, weight: int, actions: list[tuple[tuple[str, int], int]], delays: list[int]
) -> None:
    scenario = Scenario(router=router, replicas=replicas, weight=weight)
    cluster = Cluster(Delays(delays))
    floor = 0  # what must stay ready: the asked total once reached (the lower one while it changes)
    log: list[str] = []

    def step(note: str) -> None:
        nonlocal floor
        serving = {track: cluster.available(track) for track in Track}  # what the pass observes
        cluster.reconcile_pass(scenario)
        for obj in cluster.last_plan.objects:
            if obj["kind"] == "HTTPRoute":
                for backend in obj["spec"]["rules"][0]["backendRefs"]:
                    track = Track(backend["name"].removeprefix("sentiment-"))
                    assert backend["weight"] == 0 or serving[track] > 0, (
                        "a backend without available pods is weighted:\n" + "\n".join(log[-6:])
                    )
        cluster.controllers()
        ready = cluster.ready()
        log.append(f"{note}: {_describe(cluster)} ready={ready} floor={floor}")
        assert ready >= floor, "capacity dropped:\n" + "\n".join(log[-12:])
        weight_now = cluster.last_plan.status.get("traffic", {}).get("canaryWeight", 0)
        if cluster.available(C) == 0:
            assert weight_now == 0, "requests sent to a canary without available pods:\n" + "\n".join(
                log[-6:]
            )
        cluster.tick()
        if cluster.ready_as_asked() >= scenario.replicas:
            floor = scenario.replicas

    for _ in range(30):  # converge on production alone first
        step("start")
    for action, gap in actions:
        scenario.act(action)
        floor = min(floor, scenario.replicas)
        step(f"{action}")
        for _ in range(gap):
            step("  then")
    for _ in range(80):
        step("settle")
    ready_condition = next(c for c in cluster.status["conditions"] if c["type"] == reasons.READY)
    assert ready_condition["status"] == "True", "did not converge:\n" + "\n".join(log[-12:])
    if scenario.replicas == 0:
        assert not [pod for d in cluster.deployments.values() for pod in d.pods], (
            "spec.replicas 0 runs no pod in any track:\n" + "\n".join(log[-6:])
        )


def _describe(cluster: Cluster) -> str:
    parts = []
    for track, deployment in sorted(cluster.deployments.items()):
        ready = deployment.ready_count(deployment.pods)
        parts.append(
            f"{track.value}=v{deployment.version} {ready}/{len(deployment.pods)} (spec {deployment.replicas})"
        )
    return ", ".join(parts) or "nothing"
