"""The Argo CD health check (manifests/argocd/health.lua) run by a real Lua 5.1.

Argo CD runs the script in gopher-lua, a Lua 5.1, with the resource as the global `obj`: JSON objects
become tables with string keys, arrays tables indexed from 1, numbers Lua numbers, null nothing. lupa's
bundled Lua 5.1 (`lupa.lua51`) runs the same script on tables built that way, over two sets of cases:

- manifests/argocd/health_test.yaml, in Argo CD's own layout for its resource health checks (a list of
  `healthStatus: {status, message}` and `inputPath: testdata/<file>.yaml`): ModelDeployments captured
  from the operator on a cluster, in each state it writes (tests/e2e/test_argocd_health_e2e.py, with
  ALIASROLL_CAPTURE_ARGOCD_TESTDATA=1, writes them and their verdicts);
- named statuses built here, for the branches a cluster does not show on demand (a status for an older
  generation, a condition the operator does not write yet, a registry answer missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # lupa >= 2.0 bundles Lua 5.1 as its own module
import pytest
import yaml

from support.argocd_health import ARGOCD, SCRIPT, TESTDATA, health_tests, run_health

HEALTH_KEY = "resource.customizations.health.aliasroll.io_ModelDeployment"
ARGO_HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def condition(
    type_: str, status: str, reason: str, message: str = "", *, observed_generation: int | None = 3
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": observed_generation,
        "lastTransitionTime": "2026-11-23T12:08:23Z",
    }


def model_deployment(
    *,
    generation: int = 3,
    status: dict[str, Any] | None = None,
    suspend: bool | None = None,
    canary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "sentiment", "alias": "production"}, "replicas": 2}
    if suspend is not None:
        spec["suspend"] = suspend
    if canary is not None:
        spec["canary"] = canary
    return {
        "apiVersion": "aliasroll.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "generation": generation},
        "spec": spec,
        "status": status,
    }


def status_with(*conditions: dict[str, Any], observed_generation: int | None = 3) -> dict[str, Any]:
    return {
        "observedGeneration": observed_generation,
        "production": {"alias": "production", "version": "2", "replicas": 2, "availableReplicas": 2},
        "conditions": list(conditions),
    }


REGISTRY_OK = condition("RegistryReachable", "True", "RegistryAnswered", "the registry answered")
SERVING = condition("Ready", "True", "Serving", "version 2 serves production")
STEPS = {"alias": "canary", "steps": [{"weight": 25, "duration": "5m"}, {"weight": 50, "duration": "5m"}]}
UNSET = object()


def canary_status(
    phase: str | None,
    *,
    ready: dict[str, Any] = SERVING,
    version: str = "3",
    message: str = "what the run says",
    aliases: dict[str, str] | object | None = UNSET,
) -> dict[str, Any]:
    """A status with a canary run of `version` (no run: phase None) and the registry's last answer
    (`aliases` None: no status.registry at all; by default @production on 2 and @canary on 3)."""
    status = status_with(REGISTRY_OK, ready)
    canary: dict[str, Any] = {"alias": "canary", "version": version, "replicas": 1, "availableReplicas": 1}
    if phase is not None:
        canary |= {"phase": phase, "step": "1/2", "stepIndex": 0, "message": message}
    status["canary"] = canary
    if aliases is UNSET:
        aliases = {"production": "2", "canary": "3"}
    if aliases is not None:
        registry: dict[str, Any] = {"trackingUri": "http://mlflow:5000"}
        if aliases:
            registry["aliases"] = aliases
        status["registry"] = registry
    return status


def last_canary(status: dict[str, Any], phase: str, *, drained: bool) -> dict[str, Any]:
    """`status` with an ended run of version 3 recorded in status.lastCanary, as operators that keep
    the record apart write it: its pods gone (no status.canary), or still draining (status.canary
    with only the phase)."""
    status["lastCanary"] = {
        "version": "3",
        "phase": phase,
        "step": "1/2",
        "message": "aborted after 2 failed",
        "endedAt": "2026-11-23T12:09:00Z",
    }
    if drained:
        status.pop("canary", None)
    elif status["canary"].get("version") == "3":
        status["canary"] = {"alias": "canary", "version": "3", "replicas": 1, "phase": phase, "weight": 0}
    return status


@dataclass(frozen=True)
class Case:
    name: str
    obj: dict[str, Any]
    health: str
    message: str  # the whole message, or its start when it ends with "..."


CASES = [
    Case(
        "created, no status yet",
        model_deployment(),
        "Progressing",
        "Waiting for the aliasroll operator to report status",
    ),
    Case(
        "status written for an older generation",
        model_deployment(
            generation=4, status=status_with(condition("Ready", "True", "Serving", "serving version 2"))
        ),
        "Progressing",
        "Waiting for the aliasroll operator to observe generation 4",
    ),
    Case(
        "status without observedGeneration",
        model_deployment(status=status_with(condition("Ready", "True", "Serving"), observed_generation=None)),
        "Progressing",
        "Waiting for the aliasroll operator to observe generation 3",
    ),
    Case(
        "serving",
        model_deployment(status=status_with(REGISTRY_OK, condition("Ready", "True", "Serving", "2 of 2 up"))),
        "Healthy",
        "2 of 2 up",
    ),
    Case(
        "scaled to zero",
        model_deployment(status=status_with(condition("Ready", "True", "ScaledToZero", "replicas is 0"))),
        "Healthy",
        "replicas is 0",
    ),
    Case(
        "rolling out",
        model_deployment(
            status=status_with(condition("Ready", "False", "RollingOut", "production rolls to version 3"))
        ),
        "Progressing",
        "production rolls to version 3",
    ),
    *[
        Case(
            f"{reason} is degraded",
            model_deployment(
                status=status_with(condition("Ready", "False", reason, f"{reason}: what to fix"))
            ),
            "Degraded",
            f"{reason}: what to fix",
        )
        for reason in ("RolloutStalled", "ApplyFailed", "InvalidSpec", "NameConflict", "NothingToServe")
    ],
    Case(
        "a False reason this script does not know is degraded",
        model_deployment(status=status_with(condition("Ready", "False", "SomethingNew", "new trouble"))),
        "Degraded",
        "new trouble",
    ),
    Case(
        "False without a message names the reason",
        model_deployment(status=status_with(condition("Ready", "False", "ApplyFailed"))),
        "Degraded",
        "Ready is False (ApplyFailed)",
    ),
    Case(
        "Ready Unknown",
        model_deployment(status=status_with(condition("Ready", "Unknown", "Checking", "looking"))),
        "Progressing",
        "looking",
    ),
    Case(
        "status but no Ready condition yet",
        model_deployment(status=status_with(REGISTRY_OK)),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    Case(
        "no conditions at all",
        model_deployment(status={"observedGeneration": 3}),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    Case(
        "an empty conditions list",
        model_deployment(status=status_with()),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    Case(
        "Ready condition written for an older generation",
        model_deployment(
            status=status_with(condition("Ready", "True", "Serving", "old news", observed_generation=2))
        ),
        "Progressing",
        "Waiting for the Ready condition of generation 3",
    ),
    Case(
        "Ready condition without observedGeneration is read as it is",
        model_deployment(
            status=status_with(condition("Ready", "True", "Serving", "serving", observed_generation=None))
        ),
        "Healthy",
        "serving",
    ),
    Case(
        "suspended while serving",
        model_deployment(
            suspend=True,
            status=status_with(condition("Ready", "True", "Serving", "suspended: version 2 keeps serving")),
        ),
        "Suspended",
        "suspended: version 2 keeps serving",
    ),
    Case(
        "suspended before the operator wrote any status",
        model_deployment(suspend=True),
        "Suspended",
        "spec.suspend is true: alias moves are not followed...",
    ),
    Case(
        "suspended wins over a stalled rollout",
        model_deployment(
            suspend=True, status=status_with(condition("Ready", "False", "RolloutStalled", "stuck"))
        ),
        "Suspended",
        "stuck",
    ),
    Case(
        "suspend false changes nothing",
        model_deployment(suspend=False, status=status_with(condition("Ready", "True", "Serving", "ok"))),
        "Healthy",
        "ok",
    ),
    # The canary's run, in status.canary: Ready stays True while it runs.
    *[
        Case(
            f"canary {phase}",
            model_deployment(canary=STEPS, status=canary_status(phase)),
            "Progressing",
            f"Canary version 3 {phase}, step 1/2: what the run says",
        )
        for phase in ("Progressing", "Analyzing", "Promoting")
    ],
    Case(
        "a message that names the step already is not given the step again",
        model_deployment(canary=STEPS, status=canary_status("Analyzing", message="step 1/2: 25% for 5m")),
        "Progressing",
        "Canary version 3 Analyzing: step 1/2: 25% for 5m",
    ),
    Case(
        "a message that only starts like the step still gets it",
        model_deployment(canary=STEPS, status=canary_status("Analyzing", message="steps ahead")),
        "Progressing",
        "Canary version 3 Analyzing, step 1/2: steps ahead",
    ),
    Case(
        "a canary stepping while pods move gives both messages",
        model_deployment(
            canary=STEPS,
            status=canary_status(
                "Progressing",
                message="",
                ready=condition(
                    "Ready", "False", "RollingOut", "canary rolling to version 3 (0/1 available)"
                ),
            ),
        ),
        "Progressing",
        "Canary version 3 Progressing, step 1/2; canary rolling to version 3 (0/1 available)",
    ),
    Case(
        "a stalled rollout beats a canary stepping",
        model_deployment(
            canary=STEPS,
            status=canary_status("Analyzing", ready=condition("Ready", "False", "RolloutStalled", "stuck")),
        ),
        "Degraded",
        "stuck",
    ),
    Case(
        "awaiting promotion waits for a human",
        model_deployment(canary=STEPS, status=canary_status("AwaitingPromotion", message="move @production")),
        "Suspended",
        "Canary version 3 AwaitingPromotion, step 1/2: move @production",
    ),
    Case(
        "awaiting promotion while pods still move is progressing",
        model_deployment(
            canary=STEPS,
            status=canary_status(
                "AwaitingPromotion",
                ready=condition("Ready", "False", "RollingOut", "canary scaling from 2 to 1"),
            ),
        ),
        "Progressing",
        "canary scaling from 2 to 1",
    ),
    Case(
        "an abort while @canary names the version is degraded",
        model_deployment(canary=STEPS, status=canary_status("Aborted", message="aborted after 2 failed")),
        "Degraded",
        "Canary version 3 Aborted, step 1/2: aborted after 2 failed (@canary still names it: point it at "
        "another version, or delete it, to end the abort)",
    ),
    Case(
        "an abort is degraded while the canary's pods drain",
        model_deployment(
            canary=STEPS,
            status=canary_status(
                "Aborted", message="aborted", ready=condition("Ready", "False", "RollingOut", "canary ending")
            ),
        ),
        "Degraded",
        "Canary version 3 Aborted, step 1/2: aborted (@canary still names it...",
    ),
    Case(
        "an abort names the spec's canary alias",
        model_deployment(
            canary={**STEPS, "alias": "candidate"},
            status=canary_status("Aborted", message="aborted", aliases={"production": "2", "candidate": "3"}),
        ),
        "Degraded",
        "Canary version 3 Aborted, step 1/2: aborted (@candidate still names it...",
    ),
    Case(
        "an abort is over once @canary is deleted",
        model_deployment(
            canary=STEPS, status=canary_status("Aborted", message="aborted", aliases={"production": "2"})
        ),
        "Healthy",
        "version 2 serves production; canary version 3 was aborted (@canary no longer names it)",
    ),
    Case(
        "an abort is over when the registry has no alias left",
        model_deployment(canary=STEPS, status=canary_status("Aborted", aliases={})),
        "Healthy",
        "version 2 serves production; canary version 3 was aborted...",
    ),
    Case(
        "an abort is over once @canary names another version",
        model_deployment(
            canary=STEPS, status=canary_status("Aborted", aliases={"production": "2", "canary": "4"})
        ),
        "Healthy",
        "version 2 serves production; canary version 3 was aborted...",
    ),
    Case(
        "an abort is over once production's alias names the version too",
        model_deployment(
            canary=STEPS,
            status=canary_status(
                "Aborted",
                ready=condition("Ready", "True", "Serving", "version 3 serves production"),
                aliases={"production": "3", "canary": "3"},
            ),
        ),
        "Healthy",
        "version 3 serves production; canary version 3 was aborted...",
    ),
    Case(
        "an abort with no registry answer in status stands",
        model_deployment(canary=STEPS, status=canary_status("Aborted", aliases=None)),
        "Degraded",
        "Canary version 3 Aborted...",
    ),
    Case(
        "an abort recorded in status.lastCanary, its pods gone, is degraded",
        model_deployment(canary=STEPS, status=last_canary(canary_status(None), "Aborted", drained=True)),
        "Degraded",
        "Canary version 3 Aborted, step 1/2: aborted after 2 failed (@canary still names it...",
    ),
    Case(
        "an abort recorded in status.lastCanary, its pods draining, is degraded",
        model_deployment(
            canary=STEPS,
            status=last_canary(
                canary_status(None, ready=condition("Ready", "False", "RollingOut", "canary ending")),
                "Aborted",
                drained=False,
            ),
        ),
        "Degraded",
        "Canary version 3 Aborted, step 1/2: aborted after 2 failed (@canary still names it...",
    ),
    Case(
        "an abort recorded in status.lastCanary is over once @canary is deleted",
        model_deployment(
            canary=STEPS,
            status=last_canary(canary_status(None, aliases={"production": "2"}), "Aborted", drained=True),
        ),
        "Healthy",
        "version 2 serves production; canary version 3 was aborted (@canary no longer names it)",
    ),
    Case(
        "a running canary wins over the record of the last one",
        model_deployment(
            canary=STEPS,
            status=last_canary(
                canary_status("Analyzing", version="4", aliases={"production": "2", "canary": "4"}),
                "Aborted",
                drained=False,
            ),
        ),
        "Progressing",
        "Canary version 4 Analyzing, step 1/2: what the run says",
    ),
    Case(
        "a canary that ended with a promotion is healthy",
        model_deployment(
            canary=STEPS,
            status=canary_status(
                "Succeeded",
                ready=condition("Ready", "True", "Serving", "version 3 serves production"),
                aliases={"production": "3", "canary": "3"},
            ),
        ),
        "Healthy",
        "version 3 serves production",
    ),
    Case(
        "a canary with no run (draining, or a status before runs) follows Ready",
        model_deployment(canary=STEPS, status=canary_status(None)),
        "Healthy",
        "version 2 serves production",
    ),
    Case(
        "a phase this script does not know follows Ready",
        model_deployment(canary=STEPS, status=canary_status("SomethingNew")),
        "Healthy",
        "version 2 serves production",
    ),
    Case(
        "suspended wins over a canary stepping",
        model_deployment(suspend=True, canary=STEPS, status=canary_status("Paused")),
        "Suspended",
        "version 2 serves production",
    ),
]


def json_like(value: Any) -> bool:
    """Only what JSON has (Argo CD hands the script the object as JSON): no YAML timestamps, say."""
    if isinstance(value, dict):
        return all(isinstance(key, str) and json_like(item) for key, item in value.items())
    if isinstance(value, list):
        return all(json_like(item) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


def test_the_interpreter_is_lua_5_1_like_argo_cds() -> None:
    assert lua51.LuaRuntime().lua_version == (5, 1)


def test_the_script_runs_without_the_string_library() -> None:
    with pytest.raises(lua51.LuaError, match="string"):
        run_health(model_deployment(), 'return {status = string.lower("Healthy"), message = ""}')
    with pytest.raises(lua51.LuaError):
        run_health(model_deployment(), 'local s = "Healthy"; return {status = s:lower(), message = ""}')


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_health(case: Case) -> None:
    health, message = run_health(case.obj)
    assert health in ARGO_HEALTH_STATUSES
    assert health == case.health
    if case.message.endswith("..."):
        assert message.startswith(case.message.removesuffix("...")), message
    else:
        assert message == case.message


TABLE = health_tests()


@pytest.mark.parametrize("entry", TABLE, ids=[str(entry["inputPath"]) for entry in TABLE])
def test_health_of_captured_objects(entry: dict[str, Any]) -> None:
    """Each row of health_test.yaml, as Argo CD's own test of a resource health check runs it: the
    status and the message must be exactly the ones listed."""
    obj = yaml.safe_load((ARGOCD / entry["inputPath"]).read_text())
    assert json_like(obj), f"{entry['inputPath']}: not what JSON holds (quote timestamps)"
    health, message = run_health(obj)
    assert {"status": health, "message": message} == entry["healthStatus"]


def test_the_table_covers_every_health_and_every_captured_object() -> None:
    paths = [str(entry["inputPath"]) for entry in TABLE]
    assert len(paths) == len(set(paths)), "an object listed twice"
    assert sorted(paths) == sorted(f"testdata/{path.name}" for path in TESTDATA.glob("*.yaml")), (
        "health_test.yaml and testdata/ differ: every object there is listed once"
    )
    assert {entry["healthStatus"]["status"] for entry in TABLE} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }
    for entry in TABLE:
        assert set(entry) == {"healthStatus", "inputPath"}
        assert set(entry["healthStatus"]) == {"status", "message"}


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.yaml")), ids=lambda path: path.name)
def test_captured_objects_are_modeldeployments_without_cluster_identity(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert (obj["apiVersion"], obj["kind"]) == ("aliasroll.io/v1alpha1", "ModelDeployment")
    assert obj["status"], "captured after the operator wrote status"
    for key in ("uid", "resourceVersion", "managedFields"):
        assert key not in obj["metadata"], key
    # The file's name says the health it gives, as upstream names its test data.
    health = path.name.split("_")[0]
    [entry] = [entry for entry in TABLE if entry["inputPath"] == f"testdata/{path.name}"]
    assert entry["healthStatus"]["status"].lower() == health


def test_the_argocd_cm_patch_carries_the_script_verbatim() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert patch["data"] == {HEALTH_KEY: SCRIPT}, (
        "manifests/argocd/argocd-cm-patch.yaml must carry manifests/argocd/health.lua verbatim under "
        f"data[{HEALTH_KEY!r}]: copy the script into it (indented by 4 spaces)"
    )


def test_the_kustomize_component_applies_the_patch() -> None:
    component = yaml.safe_load((ARGOCD / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    [patch] = component["patches"]
    assert patch["path"] == "argocd-cm-patch.yaml"
    assert patch["target"] == {"version": "v1", "kind": "ConfigMap", "name": "argocd-cm"}
