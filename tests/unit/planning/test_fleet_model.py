"""planning/fleet.py over random histories: a model-based property test.

A small cluster runs a Deployment per version the way Kubernetes does it (new pods start in parallel
and pass their readiness probe after a while, or never for a broken version; a scale-down takes pods
that are not ready first) and the readiness gate the way it was measured on the real node: a pod takes
requests only while it is ready *and* its version's gate is True; unrouting takes effect at once,
routing only by the next pass (the worst case for capacity); while the operator is down the gate of a
new pod is never set. Hypothesis plays alias moves forward and back (to a new version, back to a warm
one, to one still leaving), canaries started, reweighted, promoted and aborted, pods that take their
time, clock jumps past windows, spec edits within the bounds of spec.rollback (window, maxWarm,
floor), spec.replicas and the router, and operator restarts (memory lost, pods going on meanwhile).

After every pass:
- capacity: pods that take requests never fall below spec.replicas once reached (below the lower of
  the two while spec.replicas changes), through every transition;
- a version becomes routed only when the aliases name it; a leaving version never grows;
- at most maxWarm versions are warm, each unrouted, at its floor, inside its window; window 0 keeps none;
- shares: a version that is unrouted or has no available pod takes none, and they add up to 100 (or 0);
  a canary's weight never exceeds the one asked while production has pods;
- the pass that starts a fast move creates no Deployment and changes no other version's replicas;
- the decision made from status alone is the one made with the last pass's memory.

And once the world quiets down, only the named versions are routed, and once the windows end nothing
else runs.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aliasroll.planning.fleet import (
    Decision,
    Role,
    RollbackSettings,
    RunningVersion,
    Sizes,
    Split,
    VersionId,
    Wanted,
    decide,
    named_targets,
)
from aliasroll.planning.fleet_status import model_uri, remembered, to_status
from aliasroll.spec import MAX_WARM_VERSIONS

MODEL = "sentiment"
T0 = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)
NEVER = 10**9  # a broken version's pods never pass their probe
#: Windows the histories use (seconds): short enough for clock jumps to end them, and 0 (the default).
WINDOWS = (0, 60, 300, 1800)
#: Passes after a human's move, while pods come up.
THEN = st.integers(0, 3)
#: What the histories reached, across all of them (test_fleet_histories checks each was reached).
SEEN: Counter[str] = Counter()


@dataclass
class Pod:
    ready_in: int
    gated: bool = False  # the gate's condition is True on the pod

    @property
    def ready(self) -> bool:
        return self.ready_in <= 0

    @property
    def available(self) -> bool:
        return self.ready and self.gated


@dataclass
class Deployment:
    broken: bool
    replicas: int = 0
    routed: bool = False
    pods: list[Pod] = field(default_factory=list)

    def observed(self, version: VersionId) -> RunningVersion:
        return RunningVersion(
            id=version,
            replicas=self.replicas,
            available=sum(pod.available for pod in self.pods),
            ready=sum(pod.ready for pod in self.pods),
            routed=self.routed,
        )

    def reconcile(self, delays: list[int], counter: list[int]) -> None:
        """The Deployment controller: pods start in parallel; a scale-down takes unready ones first."""
        while len(self.pods) < self.replicas:
            counter[0] += 1
            self.pods.append(Pod(NEVER if self.broken else delays[counter[0] % len(delays)]))
        if len(self.pods) > self.replicas:
            self.pods.sort(key=lambda pod: (pod.ready, pod.gated))
            del self.pods[: len(self.pods) - self.replicas]


def sizes(router: Split, replicas: int, canary: bool, weight: int) -> Sizes:
    """The routers' split (planning/routers/), per version."""
    if not canary or replicas == 0 or weight == 0:
        return Sizes(replicas, replicas, 0, router)
    if router is Split.WEIGHTS:
        return Sizes(replicas, replicas, max(1, math.ceil(replicas * weight / 100)), router)
    if weight == 100:
        return Sizes(replicas, 0, replicas, router)
    pods = max(1, min(replicas - 1, round(replicas * weight / 100)))
    return Sizes(replicas, max(1, replicas - pods), pods, router)


def status_after(decision: Decision) -> dict[str, object]:
    """What the planner would write: its status.production/canary, and the fleet's fields."""
    status: dict[str, object] = {**to_status(decision)}
    for plan in decision.versions:
        if plan.role in (Role.PRODUCTION, Role.CANARY):
            status[plan.role.value] = {"version": plan.id.version, "modelUri": model_uri(plan.id)}
    return status


class FleetHistories(RuleBasedStateMachine):
    @initialize(
        replicas=st.integers(1, 5),
        router=st.sampled_from(list(Split)),
        window=st.sampled_from(WINDOWS),
        max_warm=st.integers(1, MAX_WARM_VERSIONS),
        floor=st.one_of(st.none(), st.integers(1, 3)),
        delays=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    )
    def start(
        self, replicas: int, router: Split, window: int, max_warm: int, floor: int | None, delays: list[int]
    ) -> None:
        self.now = T0
        self.replicas, self.router = replicas, router
        self.settings = RollbackSettings(window=window, max_warm=max_warm, floor=floor)
        self.delays, self.created = delays, [0]
        self.latest = 1
        self.production, self.canary, self.weight = 1, None, 0  # type: int, int | None, int
        self.broken: set[int] = set()
        self.cluster: dict[VersionId, Deployment] = {}
        self.status: dict[str, object] = {}
        self.memory: Decision | None = None  # the last pass' decision, lost on a restart
        self.last: Decision | None = None  # the same, for the checks: the world's, not the operator's
        self.up = True
        self.floor = 0  # what must keep taking requests: spec.replicas once reached
        # With weights, what production's side (every routed version but the canary) must keep: the
        # canary's backend takes only its weight, whatever its pods.
        self.production_floor = 0
        self.canary_from_production: VersionId | None = None
        self.log: list[str] = []
        for _ in range(6):
            self.tick_and_pass()

    # --- the world ----------------------------------------------------------------------------

    def version(self, number: int) -> VersionId:
        return VersionId(MODEL, str(number))

    def new_version(self, broken: bool) -> int:
        self.latest += 1
        if broken:
            self.broken.add(self.latest)
        return self.latest

    def taking_requests(self) -> int:
        return sum(pod.available for deployment in self.cluster.values() for pod in deployment.pods)

    def tick(self) -> None:
        for deployment in self.cluster.values():
            for pod in deployment.pods:
                pod.ready_in -= 1
                # The operator sets the gate on a routed version's pods (new ones too) while it runs;
                # the kubelet keeps what is set.
                if self.up and deployment.routed:
                    pod.gated = True

    def tick_and_pass(self, seconds: int = 5) -> None:
        self.tick()
        self.now += timedelta(seconds=seconds)
        self.one_pass()

    # --- the pass ------------------------------------------------------------------------------

    def wanted(self) -> tuple[Wanted, Sizes]:
        canary = self.canary is not None and self.canary != self.production
        split = sizes(self.router, self.replicas, canary, self.weight)
        named = self.version(self.canary) if canary and self.canary is not None else None
        return Wanted(self.version(self.production), named, self.weight if canary else 0), split

    def decide_from(self, running: list[RunningVersion]) -> Decision:
        wanted, split = self.wanted()
        switch = remembered(self.status).switch
        return decide(
            running=running, wanted=wanted, sizes=split, settings=self.settings, switch=switch, now=self.now
        )

    def one_pass(self, then: int = 0) -> None:
        """A pass, and `then` more as pods come up (a human's next move is seldom in the same second)."""
        self.decide_and_apply()
        for _ in range(then):
            self.tick_and_pass()

    def decide_and_apply(self) -> None:
        SEEN["passes"] += 1
        observed = [deployment.observed(version) for version, deployment in sorted(self.cluster.items())]
        joined = remembered(self.status).join(observed)
        decision = self.decide_from(joined)
        if self.memory is not None:  # the same, from the last pass' own decision instead of status
            previous = {plan.id: plan for plan in self.memory.versions}
            kept = [
                replace(version, was=plan.role, left_production=plan.left_production)
                if (plan := previous.get(version.id)) is not None
                else version
                for version in observed
            ]
            from_memory = decide(
                running=kept,
                wanted=self.wanted()[0],
                sizes=self.wanted()[1],
                settings=self.settings,
                switch=self.memory.switch,
                now=self.now,
            )
            assert from_memory == decision, "status does not hold what the decision needs"
        self.check_decision(joined, decision)
        self.apply(decision)
        self.note_canary_from_production(decision)
        self.status, self.memory, self.last = status_after(decision), decision, decision
        self.log.append(
            f"{self.now:%H:%M:%S} {self.describe()} -> {self.taking_requests()} (floor {self.floor})"
        )
        self.check_capacity()

    def apply(self, decision: Decision) -> None:
        for plan in decision.versions:
            number = int(plan.id.version)
            deployment = self.cluster.setdefault(plan.id, Deployment(broken=number in self.broken))
            deployment.replicas = plan.replicas
            if not plan.routed:
                for pod in deployment.pods:
                    pod.gated = False  # unrouting takes effect at once, routing by the next pass
            deployment.routed = plan.routed
        for version in decision.remove:
            del self.cluster[version]
        for deployment in self.cluster.values():
            deployment.reconcile(self.delays, self.created)

    # --- the checks ------------------------------------------------------------------------------

    def check_decision(self, observed: list[RunningVersion], decision: Decision) -> None:
        before = {version.id: version for version in observed}
        wanted, split = self.wanted()
        named = set(named_targets(wanted, split))
        window = timedelta(seconds=self.settings.window)
        for plan in decision.versions:
            was = before.get(plan.id)
            if plan.routed and (was is None or not was.routed):
                assert plan.id in named, f"{plan.id} routed, not named\n" + self.trail()
            if plan.role is Role.LEAVING:
                assert was is not None
                assert plan.replicas <= was.replicas, "a leaving version grew"
            if plan.role is Role.WARM:
                assert not plan.routed
                assert plan.share == 0
                assert plan.replicas == self.settings.floor_for(self.replicas)
                assert plan.left_production is not None
                assert plan.warm_until == plan.left_production + window
                assert self.now < plan.warm_until
            if not plan.routed or (was is not None and was.available == 0) or was is None:
                assert plan.share == 0, (plan, was)
        warm = decision.with_role(Role.WARM)
        assert len(warm) <= self.settings.max_warm
        if self.settings.window == 0:
            assert not warm
            assert all(plan.left_production is None for plan in decision.versions)
        assert {plan.id for plan in decision.versions if plan.role in (Role.PRODUCTION, Role.CANARY)} == named
        assert not named & set(decision.remove)
        shares = sum(plan.share for plan in decision.versions)
        assert shares in (0, 100), decision
        canary = decision.with_role(Role.CANARY)
        production_side = sum(p.share for p in decision.versions if p.role in (Role.PRODUCTION, Role.LEAVING))
        if split.split is Split.WEIGHTS and canary and production_side:
            assert canary[0].share <= wanted.canary_weight
        self.check_fast_start(before, decision)
        self.count(before, decision)

    def check_fast_start(self, before: dict[VersionId, RunningVersion], decision: Decision) -> None:
        switch = decision.switch
        if switch is None or switch == remembered(self.status).switch:
            return  # none, or one that started in an earlier pass
        SEEN[f"fast {switch.kind} started"] += 1
        from_warm = before[switch.target].was is Role.WARM
        for plan in decision.versions:
            assert plan.id in before, "a fast move created a Deployment"
            if plan.id == switch.target:
                continue
            # Back to a warm version only routing changes (and its floor scales up): the version left
            # keeps every pod that takes requests (only pods not ready yet may go, as the versions
            # still leaving cover it). To one that still takes requests, the version left may also
            # give up what that one carries. (A third version unrouted in the same pass goes to its
            # floor, as in any pass.)
            if from_warm and plan.id == switch.source:
                assert plan.replicas >= before[plan.id].available, f"a fast move took {plan.id}'s pods"
            if plan.role is not Role.WARM:
                assert plan.replicas <= before[plan.id].replicas, f"a fast move grew {plan.id}"

    def check_capacity(self) -> None:
        serving = self.taking_requests()
        assert serving >= self.floor, "capacity dropped:\n" + self.trail()
        if serving >= self.replicas:
            self.floor = self.replicas
        if self.router is not Split.WEIGHTS:
            return
        canary = {plan.id for plan in self.last.versions if plan.role is Role.CANARY} if self.last else set()
        production_side = sum(
            pod.available
            for version, deployment in self.cluster.items()
            if version not in canary
            for pod in deployment.pods
        )
        # (With no pod on production's side the route's relative weights send the canary every
        # request: the total above is what counts then.)
        if production_side and self.canary_from_production is None:
            assert production_side >= self.production_floor, "production's side lost pods:\n" + self.trail()
        if production_side >= self.replicas:
            self.production_floor = self.replicas
            self.canary_from_production = None

    def note_canary_from_production(self, decision: Decision) -> None:
        """The open case of the design page: @canary names the version production's side ran in the
        last pass (a human moved @production to the canary's version and back). Its pods take only the
        canary's weight, so production's side may lack pods until its own come up; the total capacity
        is still checked. Noted until production's side is whole again."""
        canary = next((plan.id for plan in decision.with_role(Role.CANARY)), None)
        previous = {plan.id: plan.role for plan in self.last.versions} if self.last else {}
        if canary is not None and previous.get(canary) in (Role.PRODUCTION, Role.LEAVING):
            self.canary_from_production = canary
            SEEN["canary named on the version production left"] += 1
        elif canary != self.canary_from_production:
            self.canary_from_production = None

    def count(self, before: dict[VersionId, RunningVersion], decision: Decision) -> None:
        if decision.fast_move is not None:
            SEEN[f"fast {decision.fast_move.kind} ended"] += 1
            assert decision.fast_move.seconds >= 0
            assert decision.fast_move.target == self.version(self.production)
        for version in decision.remove:
            if before[version].was is Role.WARM:
                SEEN["warm version went"] += 1
        for plan in decision.versions:
            was = before.get(plan.id)
            grew = plan.role is Role.PRODUCTION and was is not None and 0 < was.replicas < plan.replicas
            if grew and was is not None and was.was is Role.WARM:
                SEEN["warm floor scaled up for a rollback"] += 1

    def trail(self) -> str:
        return "\n".join(self.log[-12:])

    def describe(self) -> str:
        parts = []
        for version, deployment in sorted(self.cluster.items()):
            live = sum(pod.available for pod in deployment.pods)
            ready = sum(pod.ready for pod in deployment.pods)
            routed = "R" if deployment.routed else "-"
            parts.append(f"v{version.version}{routed} {live}/{ready}/{deployment.replicas}")
        aliases = f"@p={self.production} @c={self.canary}:{self.weight}"
        return f"{aliases} {self.settings} replicas={self.replicas} | " + ", ".join(parts)

    # --- what happens ----------------------------------------------------------------------------

    @rule(broken=st.booleans(), then=THEN)
    def production_moves_to_a_new_version(self, broken: bool, then: int) -> None:
        self.production = self.new_version(broken)
        self.one_pass(then)

    @rule(data=st.data(), then=THEN)
    def production_moves_back(self, data: st.DataObject, then: int) -> None:
        """Back to a version that ran before: warm, still leaving, or gone (a cold rollback)."""
        earlier = [number for number in range(1, self.latest + 1) if number != self.production]
        if not earlier:
            return
        self.production = data.draw(st.sampled_from(earlier))
        if self.version(self.production) in self.cluster:
            SEEN["moved back to a version that runs"] += 1
        self.one_pass(then)

    def warm(self) -> list[VersionId]:
        return [plan.id for plan in self.memory.versions if plan.role is Role.WARM] if self.memory else []

    @precondition(lambda self: bool(self.warm()))
    @rule(data=st.data(), then=THEN)
    def production_moves_back_to_a_warm_version(self, data: st.DataObject, then: int) -> None:
        """The rollback of the issue: @production back to a version status lists as warm."""
        warm = self.warm()
        self.production = int(data.draw(st.sampled_from(warm)).version)
        SEEN["moved back to a warm version"] += 1
        self.one_pass(then)

    @rule(weight=st.sampled_from([10, 25, 50, 100]), broken=st.booleans(), then=THEN)
    def canary_starts(self, weight: int, broken: bool, then: int) -> None:
        self.canary, self.weight = self.new_version(broken), weight
        self.one_pass(then)

    @rule(weight=st.sampled_from([10, 25, 50, 100]))
    def canary_reweighted(self, weight: int) -> None:
        self.weight = weight
        self.one_pass()

    @rule(then=THEN)
    def canary_promoted(self, then: int) -> None:
        if self.canary is not None:
            self.production, self.canary = self.canary, None
            self.one_pass(then)

    @rule(then=THEN)
    def canary_aborted(self, then: int) -> None:
        self.canary = None
        self.one_pass(then)

    @rule(ticks=st.integers(1, 4))
    def pods_come_up(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick_and_pass()

    @rule(seconds=st.sampled_from([30, 61, 299, 301, 1799, 1801, 4000]))
    def clock_jumps(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.one_pass()

    @rule(
        window=st.sampled_from(WINDOWS),
        max_warm=st.integers(1, MAX_WARM_VERSIONS),
        floor=st.one_of(st.none(), st.integers(1, 6)),
    )
    def rollback_settings_edited(self, window: int, max_warm: int, floor: int | None) -> None:
        self.settings = RollbackSettings(window=window, max_warm=max_warm, floor=floor)
        self.one_pass()

    @rule(replicas=st.integers(0, 6), router=st.sampled_from(list(Split)))
    def replicas_or_router_edited(self, replicas: int, router: Split) -> None:
        if router is not self.router:
            self.production_floor = 0
        self.canary_from_production: VersionId | None = None
        self.replicas, self.router = replicas, router
        self.floor = min(self.floor, replicas)
        self.production_floor = min(self.production_floor, replicas)
        self.one_pass()

    @rule(down_for=st.integers(0, 3))
    def operator_restarts(self, down_for: int) -> None:
        """Memory lost; while it is down pods go on starting, but no gate is set on a new one."""
        self.up, self.memory = False, None
        for _ in range(down_for):
            self.tick()
            self.now += timedelta(seconds=5)
            self.check_capacity()
        self.up = True
        SEEN["restart"] += 1
        self.one_pass()

    @invariant()
    def the_gate_is_what_the_last_pass_said(self) -> None:
        if self.memory is None:
            return
        for plan in self.memory.versions:
            assert self.cluster[plan.id].routed == plan.routed

    def teardown(self) -> None:
        """The world quiets down: the named versions alone take requests, and once the windows end
        nothing else runs."""
        if not hasattr(self, "cluster"):
            return
        SEEN["histories"] += 1
        for _ in range(12):
            self.tick_and_pass()
        named = set(named_targets(*self.wanted()))
        assert self.memory is not None
        routed = {plan.id for plan in self.memory.versions if plan.routed}
        if not any(int(version.version) in self.broken for version in named) and self.replicas > 0:
            assert routed == named, "versions still routed after the world quieted:\n" + self.trail()
            assert self.memory.switch is None, "a fast move never ended"
        self.now += timedelta(seconds=max(WINDOWS) + 1)
        self.tick_and_pass()
        if routed == named:
            assert set(self.cluster) == named, "versions left after their windows:\n" + self.trail()


# The default run (CI's) takes the same histories every time; ALIASROLL_FLEET_HISTORIES=<n> explores
# n new ones on each run.
EXPLORE = os.environ.get("ALIASROLL_FLEET_HISTORIES")
HISTORIES = settings(
    max_examples=int(EXPLORE or "300"),
    derandomize=EXPLORE is None,
    stateful_step_count=40,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_fleet_histories() -> None:
    SEEN.clear()
    run_state_machine_as_test(FleetHistories, settings=HISTORIES)
    print("\nreached:", dict(sorted(SEEN.items())))
    for reached in (
        "fast rollback started",
        "fast rollback ended",
        "fast promotion started",
        "fast promotion ended",
        "warm version went",
        "warm floor scaled up for a rollback",
        "moved back to a version that runs",
        "moved back to a warm version",
        "restart",
    ):
        assert SEEN[reached] > 0, (reached, SEEN)
