"""Events and conditions state the canary's share in place (status.traffic.canaryWeight), and the
share asked beside it wherever the two differ: the replicas router rounds a weight to what whole
pods carry (20% of 4 pods is 1 pod, 25%), and the canary's share grows as its pods start.

Each case runs the planner pass by pass on a cluster whose new pods become available a few at a
time; every message of every pass is checked, and the case's own messages are looked for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from builders import NOW, OWNER, canary_spec, observed, spec, view, workload

from aliasroll import reasons
from aliasroll.planning.planner import Plan, plan
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, Track

SHARE = re.compile(r"(\d+)% of requests")


@dataclass
class Cluster:
    """Deployments as the last plan wrote them; `starting` new pods become available each pass."""

    starting: int
    status: dict[str, Any] = field(default_factory=dict)
    written: dict[Track, tuple[str, int]] = field(default_factory=dict)
    available: dict[Track, int] = field(default_factory=dict)
    said: list[tuple[str, str]] = field(default_factory=list)  # (reason or condition type, message)

    def step(self, the_spec: ModelDeploymentSpec, production: str, canary: str | None, second: int) -> Plan:
        workloads = [
            workload(track, version, replicas=replicas, available=self.available.get(track, 0))
            for track, (version, replicas) in self.written.items()
        ]
        result = plan(
            owner=OWNER,
            spec=the_spec,
            view=view(production, canary),
            observed=observed(*workloads),
            previous_status=self.status,
            now=NOW + timedelta(seconds=second),
            defaults=WorkloadDefaults(image="aliasroll/serving:test"),
        )
        written: dict[Track, tuple[str, int]] = {}
        for item in result.objects:
            if item["kind"] == "Deployment":
                labels = item["spec"]["template"]["metadata"]["labels"]
                written[Track(labels["aliasroll.io/track"])] = (
                    labels["aliasroll.io/model-version"],
                    item["spec"]["replicas"],
                )
        for track, (version, replicas) in written.items():
            before = self.available.get(track, 0) if self.written.get(track, ("", 0))[0] == version else 0
            self.available[track] = min(replicas, before + self.starting)
        self.written = written
        self.status = result.status
        messages = [(event.reason, event.message) for event in result.events]
        messages += [(c["type"], c["message"]) for c in self.status["conditions"]]
        messages += [("status.traffic", self.status["traffic"]["message"])]
        messages += [("status.canary", (self.status.get("canary") or {}).get("message", ""))]
        check_shares(self.status, messages)
        self.said += messages
        return result


def check_shares(status: dict[str, Any], messages: list[tuple[str, str]]) -> None:
    traffic = status["traffic"]
    served, requested = traffic["canaryWeight"], traffic["requestedCanaryWeight"]
    for source, message in messages:
        stated = [int(found) for found in SHARE.findall(message)]
        if not stated:
            continue
        assert stated[0] == served, f"{source} states {stated[0]}% while {served}% is served: {message}"
        if requested != served:
            assert f"({requested}% requested" in message, f"{source} hides the {requested}% asked: {message}"


@dataclass(frozen=True)
class Case:
    name: str
    spec: ModelDeploymentSpec
    expected: tuple[tuple[str, str], ...]  # (event reason or condition type, its whole message)
    starting: int = 100  # pods becoming available per pass
    then: ModelDeploymentSpec | None = None  # a spec change once the canary is in place


STEP_25 = [{"weight": 25, "duration": "1m"}]
CASES = [
    Case(
        "replicas: 20% of 4 pods is 1 pod, 25% served",
        canary_spec(20, replicas=4),
        (
            (
                reasons.CANARY_STARTED,
                "canary version 3 (@canary) starts; in place now: "
                "0% of requests (20% requested; 0 of 4 ready pods run the canary)",
            ),
            (
                reasons.READY,
                "version 2 serves production, canary version 3 gets "
                "25% of requests (20% requested; 1 of 4 ready pods run the canary)",
            ),
            (
                reasons.ROLLOUT_COMPLETE,
                "version 2 serves production, canary version 3 gets "
                "25% of requests (20% requested; 1 of 4 ready pods run the canary)",
            ),
        ),
    ),
    Case(
        "replicas: a step of 25% on 5 pods serves 20%",
        spec(canary={"alias": "canary", "steps": STEP_25}, replicas=5),
        (
            (
                reasons.CANARY_STEP,
                "version 3 step 1/1 for 1m: "
                "20% of requests (25% requested; 1 of 5 ready pods run the canary)",
            ),
        ),
    ),
    Case(
        "replicas: an exact split states one share",
        canary_spec(20, replicas=10),
        ((reasons.READY, "version 2 serves production, canary version 3 gets 20% of requests"),),
    ),
    Case(
        "replicas: the weight asked moves, whole pods do not",
        canary_spec(20, replicas=4),
        (
            (
                reasons.TRAFFIC_SHIFTED,
                "canary weight changed from 20% to 30%; in place now: "
                "25% of requests (30% requested; 1 of 4 ready pods run the canary)",
            ),
        ),
        then=canary_spec(30, replicas=4),
    ),
    Case(
        "gatewayAPI: the share grows as the canary's pods start",
        canary_spec(50, replicas=10, router="gatewayAPI"),
        (
            (
                reasons.CANARY_STARTED,
                "canary version 3 (@canary) starts; in place now: "
                "0% of requests (50% requested; 0 of the canary's 5 pods available)",
            ),
            (
                "status.traffic",
                "the HTTPRoute sends the canary "
                "20% of requests (50% requested; 2 of the canary's 5 pods available)",
            ),
            (reasons.READY, "version 2 serves production, canary version 3 gets 50% of requests"),
        ),
        starting=2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_messages_state_the_share_in_place(case: Case) -> None:
    cluster = Cluster(starting=case.starting)
    cluster.step(case.spec, "2", None, 0)
    for second in range(1, 80):
        cluster.step(case.spec, "2", "3", second)
    if case.then is not None:
        for second in range(80, 90):
            cluster.step(case.then, "2", "3", second)
    for expected in case.expected:
        assert expected in cluster.said, "\n".join(f"{s}: {m}" for s, m in dict.fromkeys(cluster.said))
