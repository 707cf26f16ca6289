"""What a rolling track says about itself is true of the version it names, and a stall stays put.

Two invariants, each a table of named cases driven through the code that reads the cluster
(kube/observe.py) and the planner or planning/health.py:

- Truth of a track: `status.production` / `status.canary` name a version, and their
  `availableReplicas` counts only that version's pods; the previous version's pods, still serving
  during a roll, are said apart ("the previous version serves on 2 pods meanwhile").
- A stall stays put: once a version's roll stalled (its Deployment's progress deadline passed, or
  its pods' containers keep failing), Ready stays False/RolloutStalled, with one Warning, until the
  version actually progresses or the alias moves; never RollingOut again at each restart of a
  crashing container.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from builders import NOW, OWNER, FixedObjects, spec, view

from aliasroll import reasons
from aliasroll.conditions import Condition
from aliasroll.kube.observe import observe
from aliasroll.planning import health
from aliasroll.planning.observed import ObservedTrack, serving
from aliasroll.planning.planner import Plan, plan
from aliasroll.planning.state import ObservedState, ServedVersion
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import Track

P, C = Track.PRODUCTION, Track.CANARY
EXIT = (
    "cannot install nope==1.0 for models:/sentiment/2 from http://mirror/simple (UV_INDEX_URL): no solution"
)


def deployment(
    track: Track,
    version: str,
    *,
    replicas: int = 2,
    pods: int,
    updated: int,
    available: int,
    generation: int = 2,
    seen: int = 2,
    deadline: bool = False,
) -> dict[str, Any]:
    """A track's Deployment as the API server has it; `pods` is status.replicas (old and new)."""
    labels = {"aliasroll.io/modeldeployment": "sentiment", "aliasroll.io/track": track.value}
    status: dict[str, Any] = {
        "observedGeneration": seen,
        "replicas": pods,
        "updatedReplicas": updated,
        "availableReplicas": available,
    }
    if deadline:
        status["conditions"] = [
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "sentiment-production-6b9" has timed out progressing.',
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"sentiment-{track.value}",
            "namespace": "ml",
            "generation": generation,
            "labels": labels,
            "ownerReferences": [{"uid": OWNER.uid, "controller": True}],
        },
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {
                    "labels": {**labels, "aliasroll.io/model-version": version},
                    "annotations": {"aliasroll.io/model-uri": f"models:/sentiment/{version}"},
                }
            },
        },
        "status": status,
    }


def pod(name: str, version: str, container: Mapping[str, Any], *, track: Track = P) -> dict[str, Any]:
    ready = bool(container.get("ready"))
    return {
        "metadata": {
            "name": name,
            "labels": {"aliasroll.io/track": track.value, "aliasroll.io/model-version": version},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "model-server", **container}],
        },
    }


# Ready's message while version 1's two pods serve and none of version 2's is available.
ROLLING_FROM_1 = (
    "production rolling to version 2 (0/2 available; the previous version serves on 2 pods meanwhile)"
)
SERVING = {"ready": True, "restartCount": 0, "state": {"running": {}}}
STARTING = {"ready": False, "restartCount": 0, "state": {"running": {}}}


def observed_state(objects: list[dict[str, Any]], pods: list[dict[str, Any]]) -> ObservedState:
    return asyncio.run(observe(FixedObjects(objects, pods=pods), OWNER)).state


def run(state: ObservedState, previous: Mapping[str, Any], **overrides: Any) -> Plan:
    return plan(
        owner=OWNER,
        spec=spec(**overrides),
        view=view("2"),
        observed=state,
        previous_status=previous,
        now=NOW,
        defaults=WorkloadDefaults(image="serving:test"),
    )


def ready_of(result: Plan) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in result.status["conditions"] if c["type"] == reasons.READY)
    return found


# Truth of a track.

# Version 1 ran on two pods; @production moved to 2. `pods` are the Deployment's, old and new.
V1_SERVING = [pod("v1-a", "1", SERVING), pod("v1-b", "1", SERVING)]


@dataclass(frozen=True)
class TrackCase:
    name: str
    deployment: dict[str, Any]
    pods: list[dict[str, Any]]
    available: int  # status.production.availableReplicas: pods of version 2 only
    ready: tuple[str, str]  # Ready's (status, reason)
    message: str  # Ready's message


TRACK_CASES = [
    TrackCase(
        name="the roll begins: two pods available, both version 1's, none counted for version 2",
        deployment=deployment(P, "2", pods=3, updated=1, available=2),
        pods=[*V1_SERVING, pod("v2-a", "2", STARTING)],
        available=0,
        ready=("False", reasons.ROLLING_OUT),
        message=ROLLING_FROM_1,
    ),
    TrackCase(
        name="half way: one pod of each version available",
        deployment=deployment(P, "2", pods=3, updated=2, available=2),
        pods=[pod("v1-a", "1", SERVING), pod("v2-a", "2", SERVING), pod("v2-b", "2", STARTING)],
        available=1,
        ready=("False", reasons.ROLLING_OUT),
        message=(
            "production rolling to version 2 (1/2 available; the previous version serves on 1 pod meanwhile)"
        ),
    ),
    TrackCase(
        name="the alias just moved: the Deployment's counts are still version 1's template's",
        deployment=deployment(P, "2", pods=2, updated=2, available=2, generation=3, seen=2),
        pods=V1_SERVING,
        available=0,
        ready=("False", reasons.ROLLING_OUT),
        message=ROLLING_FROM_1,
    ),
    TrackCase(
        name="no pod of version 2 seen (pods not readable): none counted, never version 1's",
        deployment=deployment(P, "2", pods=3, updated=1, available=2),
        pods=[],
        available=0,
        ready=("False", reasons.ROLLING_OUT),
        message=ROLLING_FROM_1,
    ),
    TrackCase(
        name="rolled out: every available pod is version 2's",
        deployment=deployment(P, "2", pods=2, updated=2, available=2),
        pods=[pod("v2-a", "2", SERVING), pod("v2-b", "2", SERVING)],
        available=2,
        ready=("True", reasons.SERVING),
        message="version 2 serves production",
    ),
    TrackCase(
        name="stalled: version 2's pod exits while version 1's two serve",
        deployment=deployment(P, "2", pods=3, updated=1, available=2),
        pods=[
            *V1_SERVING,
            pod(
                "v2-a",
                "2",
                {
                    "ready": False,
                    "restartCount": 1,
                    "state": {"terminated": {"exitCode": 1, "message": EXIT}},
                },
            ),
        ],
        available=0,
        ready=("False", reasons.ROLLOUT_STALLED),
        message=(
            f"production rolling to version 2 (0/2 available): pod v2-a exited with code 1: {EXIT}; "
            "the previous version keeps serving production on 2 pods"
        ),
    ),
    TrackCase(
        name="stalled on a first deploy: nothing else serves, and Ready says so",
        deployment=deployment(P, "2", pods=2, updated=2, available=0),
        pods=[pod("v2-a", "2", {"ready": False, "state": {"terminated": {"exitCode": 1, "message": EXIT}}})],
        available=0,
        ready=("False", reasons.ROLLOUT_STALLED),
        message=(
            f"production rolling to version 2 (0/2 available): pod v2-a exited with code 1: {EXIT}; "
            "no pod serves production"
        ),
    ),
]


@pytest.mark.parametrize("case", TRACK_CASES, ids=[case.name for case in TRACK_CASES])
def test_a_track_counts_only_the_pods_of_the_version_it_names(case: TrackCase) -> None:
    result = run(observed_state([case.deployment], case.pods), {"conditions": []})
    production = result.status["production"]
    assert (production["version"], production["availableReplicas"]) == ("2", case.available)
    ready = ready_of(result)
    assert (ready["status"], ready["reason"], ready["message"]) == (*case.ready, case.message)


OBSERVED_CASES = [
    # (name, Deployment, pods) -> (available: pods of the pinned version, serving: all the track's)
    pytest.param(
        deployment(C, "4", replicas=1, pods=2, updated=1, available=1),
        [pod("v3-a", "3", SERVING, track=C), pod("v4-a", "4", STARTING, track=C)],
        (0, 1),
        id="canary-rolling-3-to-4-counts-only-4",
    ),
    pytest.param(
        deployment(C, "4", replicas=1, pods=1, updated=1, available=1),
        [pod("v4-a", "4", SERVING, track=C)],
        (1, 1),
        id="canary-rolled-out",
    ),
    pytest.param(
        deployment(P, "2", pods=3, updated=1, available=2),
        [*V1_SERVING, pod("v2-a", "2", SERVING), pod("v2-x", "2", SERVING, track=C)],
        (1, 2),
        id="a-ready-pod-of-another-track-is-not-counted",
    ),
    pytest.param(
        deployment(P, "2", pods=3, updated=1, available=1),
        [pod("v1-a", "1", SERVING), pod("v2-a", "2", SERVING), pod("v2-b", "2", SERVING)],
        (1, 1),
        id="never-more-than-the-deployment-counts-available-or-updated",
    ),
]


@pytest.mark.parametrize(("obj", "pods", "expected"), OBSERVED_CASES)
def test_observed_counts_by_version(
    obj: dict[str, Any], pods: list[dict[str, Any]], expected: tuple[int, int]
) -> None:
    (workload,) = observed_state([obj], pods).workloads.values()
    assert (workload.available, serving(workload)) == expected


# A stall stays put.

# The cycle a kubelet takes a crashing container through (CrashLoopBackOff), as pod statuses.
LOADING = {"ready": False, "restartCount": 0, "state": {"running": {}}}
EXITED = {"ready": False, "restartCount": 1, "state": {"terminated": {"exitCode": 1, "message": EXIT}}}
BACK_OFF = {
    "ready": False,
    "restartCount": 1,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
    "lastState": {"terminated": {"exitCode": 1, "message": EXIT}},
}
RUNNING_AGAIN = {
    "ready": False,
    "restartCount": 2,
    "state": {"running": {}},
    "lastState": {"terminated": {"exitCode": 1, "message": EXIT}},
}
EXITED_AGAIN = {**EXITED, "restartCount": 2, "lastState": {"terminated": {"exitCode": 1, "message": EXIT}}}
BACK_OFF_AGAIN = {**BACK_OFF, "restartCount": 2}
RUNNING_THIRD = {**RUNNING_AGAIN, "restartCount": 3}

CRASH_LOOP = [
    # (name, version 2's container) -> Ready's reason, pass after pass
    ("starting", LOADING, reasons.ROLLING_OUT),
    ("exits 1 with its termination message", EXITED, reasons.ROLLOUT_STALLED),
    ("waits in CrashLoopBackOff", BACK_OFF, reasons.ROLLOUT_STALLED),
    ("runs again, not ready", RUNNING_AGAIN, reasons.ROLLOUT_STALLED),
    ("exits again", EXITED_AGAIN, reasons.ROLLOUT_STALLED),
    ("waits again", BACK_OFF_AGAIN, reasons.ROLLOUT_STALLED),
    ("runs a third time, not ready", RUNNING_THIRD, reasons.ROLLOUT_STALLED),
]


def test_a_crash_loop_is_one_stall_with_one_warning() -> None:
    """The issue's sample, pass after pass with the default progress deadline (not passed): the
    container restarts, and every pass after its first exit says RolloutStalled."""
    status: dict[str, Any] = {"conditions": []}
    warnings: list[str] = []
    seen: list[tuple[str, str]] = []
    for name, container, _ in CRASH_LOOP:
        state = observed_state(
            [deployment(P, "2", pods=3, updated=1, available=2)], [*V1_SERVING, pod("v2-a", "2", container)]
        )
        result = run(state, status)
        status = result.status
        seen.append((name, ready_of(result)["reason"]))
        warnings += [event.reason for event in result.events if event.type == "Warning"]
        assert status["production"]["availableReplicas"] == 0, "version 1's pods are not version 2's"
    assert seen == [(name, reason) for name, _, reason in CRASH_LOOP]
    assert warnings == [reasons.ROLLOUT_STALLED], "one Warning per stall, not per restart"


ENDS = [
    # (name, what the next pass sees) -> Ready's reason: a stall ends only when the version
    # progresses or the alias moves
    pytest.param(
        deployment(P, "2", pods=2, updated=2, available=2),
        [pod("v2-a", "2", SERVING), pod("v2-b", "2", SERVING)],
        "2",
        reasons.SERVING,
        id="the-version-becomes-available",
    ),
    pytest.param(
        deployment(P, "3", pods=3, updated=1, available=2, generation=3, seen=3),
        [*V1_SERVING, pod("v3-a", "3", STARTING)],
        "3",
        reasons.ROLLING_OUT,
        id="the-alias-moves-to-version-3",
    ),
]


@pytest.mark.parametrize(("obj", "pods", "alias", "expected"), ENDS)
def test_a_stall_ends_when_the_version_is_available_or_the_alias_moves(
    obj: dict[str, Any], pods: list[dict[str, Any]], alias: str, expected: str
) -> None:
    stalled = run(
        observed_state(
            [deployment(P, "2", pods=3, updated=1, available=2)], [*V1_SERVING, pod("v2-a", "2", BACK_OFF)]
        ),
        {"conditions": []},
    )
    assert ready_of(stalled)["reason"] == reasons.ROLLOUT_STALLED
    result = plan(
        owner=OWNER,
        spec=spec(),
        view=view(alias),
        observed=observed_state([obj], pods),
        previous_status=stalled.status,
        now=NOW,
        defaults=WorkloadDefaults(image="serving:test"),
    )
    assert ready_of(result)["reason"] == expected
    assert not [event for event in result.events if event.type == "Warning"]


# The stall as planning/health.py keeps it when a pass sees no evidence of it (the conditions of the
# pass before are `previous`).
V2 = ServedVersion(model="sentiment", version="2")
V3 = ServedVersion(model="sentiment", version="3")
STALLED_BEFORE = [
    {
        "type": reasons.PROGRESSING,
        "status": "False",
        "reason": reasons.ROLLOUT_STALLED,
        "message": f"production rolling to version 2 (0/2 available): pod v2-a exited with code 1: {EXIT}",
    }
]


def track(
    version: str,
    *,
    available: int = 0,
    serving_pods: int = 2,
    rolled_out: bool = False,
    stalled: str | None = None,
    pod_failure: str | None = None,
) -> ObservedTrack:
    return ObservedTrack(
        name="sentiment-production",
        track=P,
        model="sentiment",
        version=version,
        replicas=2,
        available=available,
        rolled_out=rolled_out,
        stalled=stalled,
        pod_failure=pod_failure,
        serving=serving_pods,
    )


@dataclass(frozen=True)
class HoldCase:
    name: str
    workload: ObservedTrack
    version: ServedVersion
    previous: list[dict[str, Any]] = field(default_factory=lambda: STALLED_BEFORE)
    reason: str = reasons.ROLLOUT_STALLED
    message: str = f"production rolling to version 2 (0/2 available): pod v2-a exited with code 1: {EXIT}"


HOLD_CASES = [
    HoldCase(
        name="the crashing pod was replaced and the new one has not failed yet: still stalled",
        workload=track("2"),
        version=V2,
    ),
    HoldCase(
        name="the Deployment's deadline restarted (it got more replicas): still stalled",
        workload=track("2"),
        version=V2,
    ),
    HoldCase(
        name="a stall written before the counts were in the message: still stalled",
        workload=track("2"),
        version=V2,
        previous=[
            {
                **STALLED_BEFORE[0],
                "message": f"production rolling to version 2: pod v2-a exited with code 1: {EXIT}",
            }
        ],
    ),
    HoldCase(
        name="a pod of version 2 became available: progress, rolling again",
        workload=track("2", available=1, serving_pods=3),
        version=V2,
        reason=reasons.ROLLING_OUT,
        message=ROLLING_FROM_1.replace("0/2", "1/2"),
    ),
    HoldCase(
        name="version 2 rolled out: serving",
        workload=track("2", available=2, rolled_out=True),
        version=V2,
        reason=reasons.SERVING,
        message="version 2 serves production",
    ),
    HoldCase(
        name="the alias moved to version 3: rolling to it",
        workload=track("3"),
        version=V3,
        reason=reasons.ROLLING_OUT,
        message=ROLLING_FROM_1.replace("version 2", "version 3"),
    ),
    HoldCase(
        name="the stall was the canary's, not production's: rolling",
        workload=track("2"),
        version=V2,
        previous=[{**STALLED_BEFORE[0], "message": "canary rolling to version 2 (0/1 available): deadline"}],
        reason=reasons.ROLLING_OUT,
        message=ROLLING_FROM_1,
    ),
    HoldCase(
        name="new evidence replaces the cause last seen",
        workload=track("2", pod_failure="pod v2-b cannot start: ImagePullBackOff: not found"),
        version=V2,
        message=(
            "production rolling to version 2 (0/2 available): "
            "pod v2-b cannot start: ImagePullBackOff: not found"
        ),
    ),
]


@pytest.mark.parametrize("case", HOLD_CASES, ids=[case.name for case in HOLD_CASES])
def test_a_stall_holds_until_the_version_progresses_or_the_alias_moves(case: HoldCase) -> None:
    ready, progressing = health.rollout_conditions(
        spec=spec(),
        observed=ObservedState(workloads={P: case.workload}),
        rollout=health.Rollout(served={P: case.version}, targets={P: 2}, canary_share="0% of requests"),
        registry_ok=True,
        not_followed=None,
        previous=case.previous,
    )
    assert ready.reason == case.reason
    assert progressing.message == case.message
    if case.reason == reasons.ROLLOUT_STALLED:
        assert progressing.reason == reasons.ROLLOUT_STALLED
        assert health.condition_events(case.previous, [progressing]) == [], "one Warning for the whole stall"


def test_without_the_conditions_before_a_pass_sees_only_what_it_observes() -> None:
    """The planner's call as it is (no `previous`): the evidence alone decides."""
    ready, _ = health.rollout_conditions(
        spec=spec(),
        observed=ObservedState(workloads={P: track("2")}),
        rollout=health.Rollout(served={P: V2}, targets={P: 2}, canary_share="0% of requests"),
        registry_ok=True,
        not_followed=None,
    )
    assert ready == Condition(
        reasons.READY,
        "False",
        reasons.ROLLING_OUT,
        ROLLING_FROM_1,
    )
