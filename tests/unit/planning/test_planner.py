"""The planner, case by case: each row is a situation a user meets and what must happen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from builders import NOW, OWNER, canary_spec, observed, spec, view, workload

from aliasroll import reasons
from aliasroll.errors import ModelNotFound, RegistryAuthFailed, RegistryUnavailable
from aliasroll.planning.history import HISTORY_LIMITS
from aliasroll.planning.planner import HISTORY_LIMIT, Plan, plan
from aliasroll.planning.state import ObservedState, RegistryView
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, Track

P, C = Track.PRODUCTION, Track.CANARY


def run(
    the_spec: ModelDeploymentSpec,
    the_view: RegistryView,
    the_observed: ObservedState,
    previous: dict[str, Any],
) -> Plan:
    return plan(
        owner=OWNER,
        spec=the_spec,
        view=the_view,
        observed=the_observed,
        previous_status=previous,
        now=NOW,
        defaults=WorkloadDefaults(image="serving:test"),
    )


def deployments(result: Plan) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in result.objects if obj["kind"] == "Deployment"}


def pinned(result: Plan, track: Track) -> tuple[str, int] | None:
    """(version, replicas) of the track's desired Deployment, None if not wanted."""
    obj = deployments(result).get(f"sentiment-{track.value}")
    if obj is None:
        return None
    return obj["metadata"]["labels"]["aliasroll.io/model-version"], obj["spec"]["replicas"]


def condition(result: Plan, type_: str) -> tuple[str, str]:
    found = next(c for c in result.status["conditions"] if c["type"] == type_)
    return found["status"], found["reason"]


def status_for(production: str | None, canary: str | None = None, **extra: Any) -> dict[str, Any]:
    """A previous status as the operator would have written it."""
    status: dict[str, Any] = {"conditions": [], **extra}
    for track, version in ((P, production), (C, canary)):
        if version is not None:
            status[track.value] = {
                "version": version,
                "modelUri": f"models:/sentiment/{version}",
                "since": "2026-11-23T11:00:00Z",
            }
    status["history"] = [
        {"track": t.value, "version": v, "from": "2026-11-23T11:00:00Z", "reason": "RolloutStarted"}
        for t, v in ((P, production), (C, canary))
        if v is not None
    ]
    return status


@dataclass(frozen=True)
class Case:
    name: str
    spec: ModelDeploymentSpec
    view: RegistryView
    observed: ObservedState
    previous: dict[str, Any]
    production: tuple[str, int] | None
    canary: tuple[str, int] | None = None
    events: tuple[str, ...] = ()
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()


CASES = [
    Case(
        name="first deploy",
        spec=spec(),
        view=view("1"),
        observed=observed(),
        previous={},
        production=("1", 2),
        events=(reasons.ROLLOUT_STARTED,),
        conditions={
            reasons.READY: ("False", reasons.ROLLING_OUT),
            reasons.PROGRESSING: ("True", reasons.ROLLING_OUT),
            reasons.REGISTRY_REACHABLE: ("True", reasons.REGISTRY_ANSWERED),
            reasons.ALIASES_RESOLVED: ("True", reasons.RESOLVED),
        },
    ),
    Case(
        name="steady state",
        spec=spec(),
        view=view("1"),
        observed=observed(workload(P, "1")),
        previous=status_for("1"),
        production=("1", 2),
        conditions={
            reasons.READY: ("True", reasons.SERVING),
            reasons.PROGRESSING: ("False", reasons.ROLLOUT_COMPLETE),
        },
    ),
    Case(
        name="alias moved",
        spec=spec(),
        view=view("2"),
        observed=observed(workload(P, "1")),
        previous=status_for("1"),
        production=("2", 2),
        events=(reasons.ROLLOUT_STARTED,),
        conditions={reasons.READY: ("False", reasons.ROLLING_OUT)},
    ),
    Case(
        name="rollback",
        spec=spec(),
        view=view("1"),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("1", 2),
        events=(reasons.ROLLBACK_STARTED,),
    ),
    Case(
        name="canary added",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=10)),
        previous=status_for("2"),
        # Production keeps all 10 replicas until canary pods are available to take their share.
        production=("2", 10),
        canary=("3", 2),
        events=(reasons.CANARY_STARTED,),
    ),
    Case(
        name="canary available: production gives up its share, not Ready until it has",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=10), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        conditions={
            reasons.READY: ("False", reasons.ROLLING_OUT),
            reasons.PROGRESSING: ("True", reasons.ROLLING_OUT),
        },
    ),
    Case(
        name="canary split in place",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        conditions={reasons.READY: ("True", reasons.SERVING)},
    ),
    Case(
        name="weight changed",
        spec=canary_spec(50),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3", traffic={"requestedCanaryWeight": 20}),
        production=("2", 8),
        canary=("3", 5),
        events=(reasons.TRAFFIC_SHIFTED,),
    ),
    Case(
        name="canary moved to a new version",
        spec=canary_spec(20),
        view=view("2", "4"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("4", 2),
        events=(reasons.CANARY_UPDATED,),
    ),
    Case(
        name="promotion: production rolls at its size, canary kept until production has rolled",
        spec=canary_spec(20),
        view=view("3", "3"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("3", 8),  # a new count with a new template would scale the old version first
        canary=("3", 2),
        events=(reasons.CANARY_PROMOTED,),
        pruned=(),
    ),
    Case(
        name="promotion: production rolled at its size grows to the whole, canary still kept",
        spec=canary_spec(20),
        view=view("3", "3"),
        observed=observed(workload(P, "3", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("3", "3"),
        production=("3", 10),
        canary=("3", 2),
        events=(),
        pruned=(),
    ),
    Case(
        name="promotion done: canary pruned, quietly (CanaryPromoted said it)",
        spec=canary_spec(20),
        view=view("3", "3"),
        observed=observed(workload(P, "3", replicas=10), workload(C, "3", replicas=2)),
        previous=status_for("3", "3"),
        production=("3", 10),
        pruned=("sentiment-canary",),
    ),
    Case(
        name="canary ends (alias deleted): kept whole while production grows back",
        spec=canary_spec(20),
        view=view("2", None),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 10),
        canary=("3", 2),
        conditions={reasons.READY: ("False", reasons.ROLLING_OUT)},
    ),
    Case(
        name="canary ends: production's new pods half up, canary still whole",
        spec=canary_spec(20),
        view=view("2", None),
        observed=observed(
            workload(P, "2", replicas=10, available=9, rolled_out=False), workload(C, "3", replicas=2)
        ),
        previous=status_for("2", "3"),
        production=("2", 10),
        canary=("3", 2),
    ),
    Case(
        name="canary ends: production carries every request, canary removed",
        spec=canary_spec(20),
        view=view("2", None),
        observed=observed(workload(P, "2", replicas=10), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 10),
        events=(reasons.CANARY_REMOVED,),
        pruned=("sentiment-canary",),
    ),
    Case(
        name="canary ends (weight 0): kept while production grows back",
        spec=canary_spec(0),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 10),
        canary=("3", 2),
    ),
    Case(
        name="weight lowered 50 -> 20: canary shrinks only as production's pods come up",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=5), workload(C, "3", replicas=5)),
        previous=status_for("2", "3", traffic={"requestedCanaryWeight": 50}),
        production=("2", 8),
        canary=("3", 5),
        events=(reasons.TRAFFIC_SHIFTED,),
    ),
    Case(
        name="weight lowered: two new production pods up, canary gives up two",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(
            workload(P, "2", replicas=8, available=7, rolled_out=False), workload(C, "3", replicas=5)
        ),
        previous=status_for("2", "3", traffic={"requestedCanaryWeight": 20}),
        production=("2", 8),
        canary=("3", 3),
    ),
    Case(
        name="canary alias on the production version: no canary",
        spec=canary_spec(20),
        view=view("2", "2"),
        observed=observed(workload(P, "2", replicas=10)),
        previous=status_for("2"),
        production=("2", 10),
    ),
    Case(
        name="registry down: nothing rolls, nothing pruned",
        spec=canary_spec(20),
        view=view(error=RegistryUnavailable("the registry at http://mlflow:5000 did not answer")),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        events=(reasons.REGISTRY_UNREACHABLE,),
        conditions={
            reasons.READY: ("True", reasons.SERVING),
            reasons.REGISTRY_REACHABLE: ("False", reasons.REGISTRY_UNREACHABLE),
            reasons.ALIASES_RESOLVED: ("Unknown", reasons.REGISTRY_NOT_CONSULTED),
        },
    ),
    Case(
        name="registry down on first deploy: nothing created",
        spec=spec(),
        view=view(error=RegistryUnavailable("the registry at http://mlflow:5000 did not answer")),
        observed=observed(),
        previous={},
        production=None,
        events=(reasons.NOTHING_TO_SERVE, reasons.REGISTRY_UNREACHABLE),
        conditions={reasons.READY: ("False", reasons.NOTHING_TO_SERVE)},
    ),
    Case(
        name="registry refuses credentials",
        spec=spec(),
        view=view(error=RegistryAuthFailed("refused")),
        observed=observed(workload(P, "1")),
        previous=status_for("1"),
        production=("1", 2),
        events=(reasons.REGISTRY_AUTH_FAILED,),
        conditions={reasons.REGISTRY_REACHABLE: ("False", reasons.REGISTRY_AUTH_FAILED)},
    ),
    Case(
        name="model deleted from the registry",
        spec=spec(),
        view=view(error=ModelNotFound("the registry has no registered model 'sentiment'")),
        observed=observed(workload(P, "1")),
        previous=status_for("1"),
        production=("1", 2),
        events=(reasons.MODEL_NOT_FOUND,),
        conditions={
            reasons.READY: ("True", reasons.SERVING),
            reasons.REGISTRY_REACHABLE: ("True", reasons.REGISTRY_ANSWERED),
            reasons.ALIASES_RESOLVED: ("False", reasons.MODEL_NOT_FOUND),
        },
    ),
    Case(
        name="alias missing: current version kept",
        spec=spec(),
        view=view(None),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.ALIAS_NOT_FOUND,),
        conditions={
            reasons.READY: ("True", reasons.SERVING),
            reasons.ALIASES_RESOLVED: ("False", reasons.ALIAS_NOT_FOUND),
        },
    ),
    Case(
        name="version not ready: not rolled",
        spec=spec(),
        view=view("3", not_ready=("3",)),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.VERSION_NOT_READY,),
        conditions={reasons.ALIASES_RESOLVED: ("False", reasons.VERSION_NOT_READY)},
    ),
    Case(
        name="version does not exist: not rolled",
        spec=spec(),
        view=view("9", missing=("9",)),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.VERSION_NOT_FOUND,),
    ),
    Case(
        name="canary version not ready: running canary kept",
        spec=canary_spec(20),
        view=view("2", "4", not_ready=("4",)),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        events=(reasons.VERSION_NOT_READY,),
    ),
    Case(
        name="canary available, production still scaling down: not Ready until the split is in place",
        spec=canary_spec(20),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=8, available=10), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        conditions={
            reasons.READY: ("False", reasons.ROLLING_OUT),
            reasons.PROGRESSING: ("True", reasons.ROLLING_OUT),
        },
    ),
    Case(
        name="owned Deployment deleted by hand: recreated at the recorded version when the registry is down",
        spec=spec(),
        view=view(error=RegistryUnavailable("down")),
        observed=observed(),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.REGISTRY_UNREACHABLE,),
    ),
    Case(
        name="model renamed in spec and new model unresolvable: old workload left alone",
        spec=spec(model={"name": "other", "alias": "production"}),
        view=view(None),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=None,
        events=(reasons.NOTHING_TO_SERVE, reasons.ALIAS_NOT_FOUND),
        pruned=(),
    ),
    Case(
        name="rollout stalled: Ready false with the Deployment's reason",
        spec=spec(),
        view=view("2"),
        observed=observed(
            workload(P, "2", available=0, rolled_out=False, stalled="ReplicaSet has timed out progressing")
        ),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.ROLLOUT_STALLED,),
        conditions={
            reasons.READY: ("False", reasons.ROLLOUT_STALLED),
            reasons.PROGRESSING: ("False", reasons.ROLLOUT_STALLED),
        },
    ),
    Case(
        name="a pod of the new version exits: stalled at once, with its termination message",
        spec=spec(),
        view=view("2"),
        observed=observed(
            workload(
                P,
                "2",
                available=0,
                rolled_out=False,
                pod_failure="pod p exited with code 1: cannot install nope==1.0 from http://mirror/simple",
            ),
        ),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.ROLLOUT_STALLED,),
        conditions={
            reasons.READY: ("False", reasons.ROLLOUT_STALLED),
            reasons.PROGRESSING: ("False", reasons.ROLLOUT_STALLED),
        },
    ),
    Case(
        name="model renamed to one whose alias has the same version number: a rollout like any other",
        spec=spec(model={"name": "other", "alias": "production"}),
        view=view("2", model="other"),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.ROLLOUT_STARTED,),
        conditions={reasons.READY: ("False", reasons.ROLLING_OUT)},
    ),
    Case(
        name="replicas 0: Ready, and says it is scaled to zero",
        spec=spec(replicas=0),
        view=view("2"),
        observed=observed(workload(P, "2", replicas=0)),
        previous=status_for("2"),
        production=("2", 0),
        conditions={reasons.READY: ("True", reasons.SCALED_TO_ZERO)},
    ),
    Case(
        name="suspended: an alias move is not followed",
        spec=spec(suspend=True),
        view=view("3"),
        observed=observed(workload(P, "2")),
        previous=status_for("2"),
        production=("2", 2),
        events=(reasons.SUSPENDED,),
        conditions={
            reasons.READY: ("True", reasons.SERVING),
            reasons.PROGRESSING: ("False", reasons.SUSPENDED),
            reasons.ALIASES_RESOLVED: ("True", reasons.RESOLVED),
        },
    ),
    Case(
        name="suspended: a new canary alias is not followed, the running one stays",
        spec=spec(suspend=True, replicas=10, canary={"alias": "canary", "weight": 20}),
        view=view("2", "4"),
        observed=observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 8),
        canary=("3", 2),
        events=(reasons.SUSPENDED,),
    ),
    Case(
        name="suspended: spec changes still apply (weight 0 ends the canary)",
        spec=spec(suspend=True, replicas=10, canary={"alias": "canary", "weight": 0}),
        view=view("2", "3"),
        observed=observed(workload(P, "2", replicas=10), workload(C, "3", replicas=2)),
        previous=status_for("2", "3"),
        production=("2", 10),
        events=(reasons.CANARY_REMOVED, reasons.SUSPENDED),
        pruned=("sentiment-canary",),
    ),
    Case(
        name="suspended before anything was deployed: nothing is",
        spec=spec(suspend=True),
        view=view("1"),
        observed=observed(),
        previous={},
        production=None,
        events=(reasons.NOTHING_TO_SERVE,),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_planner(case: Case) -> None:
    result = run(case.spec, case.view, case.observed, case.previous)
    assert pinned(result, P) == case.production
    assert pinned(result, C) == case.canary
    assert tuple(event.reason for event in result.events) == case.events
    for type_, expected in case.conditions.items():
        assert condition(result, type_) == expected, type_
    assert tuple(child.name for child in result.prune) == case.pruned


def test_pods_are_pinned_to_a_version_never_an_alias() -> None:
    result = run(spec(), view("7"), observed(), {})
    template = deployments(result)["sentiment-production"]["spec"]["template"]
    env = {item["name"]: item["value"] for item in template["spec"]["containers"][0]["env"]}
    assert env["MODEL_URI"] == "models:/sentiment/7"
    assert template["metadata"]["annotations"]["aliasroll.io/model-uri"] == "models:/sentiment/7"
    assert "@" not in env["MODEL_URI"]


def test_every_object_is_owned_by_the_resource() -> None:
    result = run(
        canary_spec(20, router="gatewayAPI"), view("2", "3"), observed(workload(P, "2")), status_for("2")
    )
    for obj in result.objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"], ref["kind"]) == (OWNER.uid, True, "ModelDeployment"), obj[
            "kind"
        ]


def test_the_same_inputs_give_the_same_plan() -> None:
    """Level-based: any trigger may run the pass again and must not change anything."""
    first = run(canary_spec(20), view("2", "3"), observed(workload(P, "2", replicas=8)), status_for("2"))
    again = run(canary_spec(20), view("2", "3"), observed(workload(P, "2", replicas=8)), first.status)
    assert again.objects == first.objects
    assert again.status == first.status
    assert again.events == ()


def test_history_records_spans_per_track() -> None:
    first = run(spec(), view("1"), observed(), {})
    moved = run(spec(), view("2"), observed(workload(P, "1")), first.status)
    back = run(spec(), view("1"), observed(workload(P, "2")), moved.status)
    spans = [(entry["track"], entry["version"], "to" in entry) for entry in back.status["history"]]
    assert spans == [("production", "1", True), ("production", "2", True), ("production", "1", False)]
    assert back.status["history"][-1]["reason"] == reasons.ROLLBACK_STARTED
    assert back.status["production"]["since"] == back.status["history"][-1]["from"]


def test_history_is_bounded_and_keeps_the_open_span() -> None:
    status: dict[str, Any] = {}
    obs = observed()
    for version in range(1, HISTORY_LIMIT + 10):
        result = run(spec(), view(str(version)), obs, status)
        status = result.status
        obs = observed(workload(P, str(version)))
    limit = HISTORY_LIMITS[P]
    assert [span["version"] for span in status["history"]] == [
        str(version) for version in range(HISTORY_LIMIT + 10 - limit, HISTORY_LIMIT + 10)
    ]
    assert status["history"][-1] == {
        "track": "production",
        "model": "sentiment",
        "version": str(HISTORY_LIMIT + 9),
        "from": status["production"]["since"],
        "reason": reasons.ROLLOUT_STARTED,
    }


def test_canary_spans_never_push_out_what_served_production() -> None:
    """Each track keeps its own latest spans: a run of canaries leaves production's history whole."""
    the_spec = canary_spec(20)
    status: dict[str, Any] = {}
    pods = [workload(P, "1", replicas=10)]
    for production in ("1", "2", "3"):
        for candidate in range(10 * int(production), 10 * int(production) + 4):
            result = run(the_spec, view(production, str(candidate)), observed(*pods), status)
            status = result.status
            pods = [
                workload(
                    Track(item["spec"]["template"]["metadata"]["labels"]["aliasroll.io/track"]),
                    item["spec"]["template"]["metadata"]["labels"]["aliasroll.io/model-version"],
                    replicas=item["spec"]["replicas"],
                )
                for item in result.objects
                if item["kind"] == "Deployment"
            ]
    spans = [(span["track"], span["version"]) for span in status["history"]]
    assert spans == [
        ("production", "1"),
        ("production", "2"),
        ("production", "3"),
        ("canary", "32"),
        ("canary", "33"),
    ]


def test_conditions_keep_transition_time_while_status_holds() -> None:
    first = run(spec(), view("1"), observed(workload(P, "1")), status_for("1"))
    ready = next(c for c in first.status["conditions"] if c["type"] == reasons.READY)
    later = plan(
        owner=OWNER,
        spec=spec(),
        view=view("1"),
        observed=observed(workload(P, "1")),
        previous_status=first.status,
        now=NOW.replace(hour=13),
        defaults=WorkloadDefaults(),
    )
    assert next(c for c in later.status["conditions"] if c["type"] == reasons.READY) == ready
    assert all(c["observedGeneration"] == OWNER.generation for c in later.status["conditions"])


def test_rollout_complete_is_announced_once() -> None:
    rolling = run(spec(), view("2"), observed(workload(P, "1")), status_for("1"))
    done = run(spec(), view("2"), observed(workload(P, "2")), rolling.status)
    assert [e.reason for e in done.events] == [reasons.ROLLOUT_COMPLETE]
    assert run(spec(), view("2"), observed(workload(P, "2")), done.status).events == ()


def test_status_names_versions_run_ids_and_split() -> None:
    result = run(
        canary_spec(20),
        view("2", "3"),
        observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        status_for("2", "3"),
    )
    assert result.status["production"]["runId"] == "run-2"
    assert result.status["canary"] | {"since": None} == {
        "alias": "canary",
        "version": "3",
        "modelUri": "models:/sentiment/3",
        "runId": "run-3",
        "replicas": 2,
        "availableReplicas": 2,
        "since": None,
        # A fixed weight is a canary run waiting for a human to promote it, at its weight since
        # it was in place.
        "phase": "AwaitingPromotion",
        "model": "sentiment",
        "promotingFrom": "2",
        "stepStartedAt": "2026-11-23T12:00:00Z",
        "message": "move @production to version 3 to promote it",
        "weight": 20,
    }
    assert result.status["traffic"]["canaryWeight"] == 20
    assert result.status["traffic"]["requestedCanaryWeight"] == 20
    assert result.status["registry"]["aliases"] == {"production": "2", "canary": "3"}
    assert result.status["observedGeneration"] == OWNER.generation


def test_pod_template_follows_the_serving_image_contract() -> None:
    the_spec = spec(
        registry={"trackingUri": "http://mlflow:5000", "credentialsSecretRef": {"name": "creds"}},
        serving={"port": 9000, "adminPort": 9100, "env": [{"name": "EXTRA", "value": "1"}]},
    )
    pod = deployments(run(the_spec, view("4"), observed(), {}))["sentiment-production"]["spec"]["template"][
        "spec"
    ]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {
        "MODEL_URI": "models:/sentiment/4",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "PORT": "9000",
        "ADMIN_PORT": "9100",
        "SCRATCH_DIR": "/scratch",
        "ALIASROLL_TRACK": "production",
        "EXTRA": "1",
    }
    assert "envFrom" not in container, "the operator's Secret is never the pods' by default"
    assert container["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9100, "protocol": "TCP"},
    ]
    # The probes read the admin port, which no Service routes to.
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    strategy = deployments(run(the_spec, view("4"), observed(), {}))["sentiment-production"]["spec"][
        "strategy"
    ]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "a roll never drops below the asked capacity"


def test_pods_without_credentials_of_their_own_are_said_once() -> None:
    """Review 2026-12 finding 3: the operator's write-capable Secret went to the pods by default. Now
    they get none unless spec.serving names one, and the resource says so, naming the field."""
    registry = {"trackingUri": "http://mlflow:5000", "credentialsSecretRef": {"name": "creds"}}
    the_spec = spec(registry=registry)
    first = run(the_spec, view("4"), observed(), {})
    assert condition(first, reasons.POD_CREDENTIALS) == ("False", reasons.POD_CREDENTIALS_NOT_SET)
    warnings = [e for e in first.events if e.reason == reasons.POD_CREDENTIALS_NOT_SET]
    assert len(warnings) == 1
    assert warnings[0].type == "Warning"
    assert "spec.serving.credentialsSecretRef" in warnings[0].message
    again = run(the_spec, view("4"), observed(workload(P, "4")), first.status)
    assert not [e for e in again.events if e.reason == reasons.POD_CREDENTIALS_NOT_SET]
    fixed = run(
        spec(registry=registry, serving={"credentialsSecretRef": {"name": "read-only"}}),
        view("4"),
        observed(workload(P, "4")),
        again.status,
    )
    assert condition(fixed, reasons.POD_CREDENTIALS) == ("True", reasons.POD_CREDENTIALS_SET)
    assert reasons.POD_CREDENTIALS not in {
        c["type"] for c in run(spec(), view("4"), observed(), {}).status["conditions"]
    }


def test_no_empty_maps_in_status() -> None:
    """The API server reads an empty map as null, which the status schema refuses."""
    result = run(spec(), view(None), observed(workload(P, "2")), status_for("2"))
    assert result.status["registry"] == {"trackingUri": "http://mlflow:5000"}


def test_every_running_track_gets_a_disruption_budget() -> None:
    result = run(
        canary_spec(20),
        view("2", "3"),
        observed(workload(P, "2", replicas=8), workload(C, "3", replicas=2)),
        status_for("2", "3"),
    )
    budgets = {
        obj["metadata"]["name"]: obj["spec"] for obj in result.objects if obj["kind"] == "PodDisruptionBudget"
    }
    assert budgets["sentiment-production"]["maxUnavailable"] == 1
    assert budgets["sentiment-canary"]["maxUnavailable"] == 1
    scaled_to_zero = run(spec(replicas=0), view("2"), observed(workload(P, "2", replicas=0)), status_for("2"))
    assert not [obj for obj in scaled_to_zero.objects if obj["kind"] == "PodDisruptionBudget"]


def test_the_first_pass_says_what_it_placed_so_seeing_its_deployment_starting_writes_no_status() -> None:
    """Status is written once the plan is applied: the first pass already counts the replicas its
    Deployment asks for, and the pass that then sees that Deployment (pods not yet available)
    computes the same status, so no second write is made for it."""
    first = run(spec(), view("1"), observed(), {})
    assert pinned(first, P) == ("1", 2)
    assert first.status["replicas"] == 2
    starting = workload(P, "1", replicas=2, available=0, rolled_out=False)
    second = run(spec(), view("1"), observed(starting), first.status)
    assert second.status == first.status
