"""Small builders for planner and router tests: named arguments in, frozen inputs out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aliasroll.errors import AliasrollError
from aliasroll.planning.state import AliasTarget, ObservedState, ObservedWorkload, RegistryView
from aliasroll.registry.types import VersionInfo
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, Track, parse_spec

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1", generation=3)


def spec(**overrides: Any) -> ModelDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "sentiment", "alias": "production"},
        "registry": {"trackingUri": "http://mlflow:5000", "pollInterval": "30s"},
        "replicas": 2,
    }
    raw.update(overrides)
    return parse_spec(raw)


def canary_spec(weight: int = 20, *, replicas: int = 10, router: str = "replicas") -> ModelDeploymentSpec:
    return spec(canary={"alias": "canary", "weight": weight}, replicas=replicas, traffic={"router": router})


def info(version: str, status: str = "READY", *, model: str = "sentiment") -> VersionInfo:
    return VersionInfo(model=model, version=version, status=status, run_id=f"run-{version}", source=None)


def view(
    production: str | None = "1",
    canary: str | None = None,
    *,
    not_ready: tuple[str, ...] = (),
    missing: tuple[str, ...] = (),
    error: AliasrollError | None = None,
    model: str = "sentiment",
) -> RegistryView:
    if error is not None:
        return RegistryView(model=model, error=error)

    def target(alias: str, version: str | None) -> AliasTarget:
        if version is None:
            return AliasTarget(alias=alias, version=None)
        found = (
            None
            if version in missing
            else info(version, "PENDING_REGISTRATION" if version in not_ready else "READY", model=model)
        )
        return AliasTarget(alias=alias, version=version, info=found)

    return RegistryView(
        model=model, production=target("production", production), canary=target("canary", canary)
    )


def workload(
    track: Track,
    version: str,
    *,
    replicas: int = 2,
    available: int | None = None,
    rolled_out: bool = True,
    stalled: str | None = None,
    pod_failure: str | None = None,
) -> ObservedWorkload:
    return ObservedWorkload(
        name=f"sentiment-{track.value}",
        track=track,
        model="sentiment",
        version=version,
        replicas=replicas,
        available=replicas if available is None else available,
        rolled_out=rolled_out,
        stalled=stalled,
        run_id=f"run-{version}",
        pod_failure=pod_failure,
    )


def observed(
    *workloads: ObservedWorkload, extra_children: tuple[tuple[str, str, str], ...] = ()
) -> ObservedState:
    from aliasroll.planning.state import ChildRef

    children = [ChildRef("apps/v1", "Deployment", w.name) for w in workloads]
    children += [ChildRef(api, kind, name) for api, kind, name in extra_children]
    return ObservedState(workloads={w.track: w for w in workloads}, children=tuple(children))


class FixedObjects:
    """What the watch-fed cache hands a pass (kube.cache.OwnedCache): these objects and pods."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = (), *, pods: Iterable[Mapping[str, Any]] = ()):
        self.objects = list(objects)
        self.pod_list = list(pods)

    async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        return list(self.objects)

    async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        return list(self.pod_list)


def written_status(body: Any) -> dict[str, Any] | None:
    """The status a patch body writes, when it is the operator's status write (kube.applier: a JSON
    patch that tests the uid, then sets /status); None for any other patch."""
    if not isinstance(body, list):
        return None
    for operation in body:
        if operation.get("path") == "/status" and operation.get("op") in ("add", "replace"):
            return dict(operation["value"])
    return None


def uid_required(body: Any) -> str | None:
    """The uid a status write requires the object to have (the JSON patch's test)."""
    if isinstance(body, list):
        for operation in body:
            if operation.get("op") == "test" and operation.get("path") == "/metadata/uid":
                return str(operation["value"])
    return None
