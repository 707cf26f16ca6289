"""The Argo CD health check (manifests/argocd/health.lua) run by a real Lua 5.1, over named statuses.

Argo CD runs the script in gopher-lua, a Lua 5.1, with the resource as the global `obj`: JSON objects
become tables with string keys, arrays tables indexed from 1, numbers Lua numbers, null nothing. lupa's
bundled Lua 5.1 (`lupa.lua51`) runs the same script on tables built that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # lupa >= 2.0 bundles Lua 5.1 as its own module
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
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
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "sentiment", "alias": "production"}, "replicas": 2}
    if suspend is not None:
        spec["suspend"] = suspend
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
]


def to_lua(runtime: Any, value: Any) -> Any:
    """A Python value as Argo CD hands JSON to Lua: objects and arrays as tables, null as nothing."""
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(runtime, item)
        return table
    return value


def run_health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def test_the_interpreter_is_lua_5_1_like_argo_cds() -> None:
    assert lua51.LuaRuntime().lua_version == (5, 1)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_health(case: Case) -> None:
    health, message = run_health(case.obj)
    assert health in ARGO_HEALTH_STATUSES
    assert health == case.health
    if case.message.endswith("..."):
        assert message.startswith(case.message.removesuffix("...")), message
    else:
        assert message == case.message


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
