"""A pass that could not change the cluster says so, and says nothing else: status keeps naming what
runs (never the plan that was refused), and objects it does not control are never written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httpx2
from builders import FixedObjects, info, written_status
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import api_info

from aliasroll import reasons
from aliasroll.controller.reconciler import Reconciler
from aliasroll.planning.state import EventRecord
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import ModelSnapshot, RegistryPoller

UID = "u-1"
BODY: dict[str, Any] = {
    "apiVersion": "aliasroll.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"namespace": "ml", "name": "sentiment", "uid": UID, "generation": 2},
    "spec": {
        "model": {"name": "sentiment", "alias": "production"},
        "registry": {"trackingUri": "http://mlflow:5000"},
        "replicas": 2,
    },
    "status": {
        "observedGeneration": 1,
        "production": {
            "alias": "production",
            "version": "1",
            "modelUri": "models:/sentiment/1",
            "since": "2026-11-23T11:00:00Z",
        },
        "history": [
            {
                "track": "production",
                "version": "1",
                "from": "2026-11-23T11:00:00Z",
                "reason": "RolloutStarted",
            }
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "version 1 serves production",
                "lastTransitionTime": "2026-11-23T11:00:00Z",
            }
        ],
    },
}
OWNED = {
    "controller": True,
    "uid": UID,
    "kind": "ModelDeployment",
    "name": "sentiment",
    "apiVersion": "aliasroll.io/v1alpha1",
}


def deployment(version: str) -> dict[str, Any]:
    labels = {
        "aliasroll.io/modeldeployment": "sentiment",
        "aliasroll.io/track": "production",
        "aliasroll.io/model-version": version,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "sentiment-production",
            "namespace": "ml",
            "uid": "d-1",
            "generation": 1,
            "labels": labels,
            "ownerReferences": [OWNED],
        },
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"aliasroll.io/model-uri": f"models:/sentiment/{version}"},
                }
            },
        },
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
    }


def api_error(code: int, message: str) -> ApiError:
    request = httpx2.Request("PATCH", "https://127.0.0.1:6443/x")
    status = {"kind": "Status", "message": message, "code": code}
    return ApiError(request=request, response=httpx2.Response(code, json=status, request=request))


class Cluster:
    """The API server as far as one pass needs it; `refuse` makes applies of that kind fail."""

    def __init__(
        self, objects: list[dict[str, Any]], *, refuse: str | None = None, refusal: ApiError | None = None
    ) -> None:
        self.objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
        self.refuse = refuse
        self.refusal = refusal
        self.applied: list[tuple[str, str]] = []
        self.status: dict[str, Any] | None = None

    def list(self, resource: Any, **_: Any) -> AsyncIterator[dict[str, Any]]:
        kind = api_info(resource).resource.kind
        found = [obj for (k, _), obj in self.objects.items() if k == kind]

        async def items() -> AsyncIterator[dict[str, Any]]:
            for obj in found:
                yield obj

        return items()

    async def get(self, resource: Any, name: str, **_: Any) -> dict[str, Any]:
        kind = api_info(resource).resource.kind
        if (kind, name) not in self.objects:
            raise api_error(404, f"{kind} {name} not found")
        return self.objects[(kind, name)]

    async def patch(self, resource: Any, name: str, body: Mapping[str, Any], **_: Any) -> None:
        if (status := written_status(body)) is not None:
            self.status = status
            return
        if body["kind"] == self.refuse and self.refusal is not None:
            raise self.refusal
        if body["kind"] == self.refuse:
            raise api_error(403, f"{body['kind'].lower()}s is forbidden: User cannot patch resource")
        self.applied.append((body["kind"], name))

    async def delete(self, resource: Any, name: str, **_: Any) -> None:
        self.applied.append(("delete", name))


class Registry:
    """@production on version 2."""

    async def subscribe(self, **_: Any) -> ModelSnapshot:
        return ModelSnapshot(model="sentiment", aliases={"production": "2"}, error=None)

    async def version(self, endpoint: Any, model: str, version: str, **_: Any) -> Any:
        return info(version)

    async def set_alias(self, *_: Any) -> None:
        pass

    async def delete_alias(self, *_: Any) -> None:
        pass

    async def set_version_tags(self, *_: Any) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.posted: list[EventRecord] = []

    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        self.posted.append(event)


def run_pass(cluster: Cluster, body: Mapping[str, Any]) -> Events:
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(cluster.objects.values()),
        registry=cast(RegistryPoller, Registry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    asyncio.run(reconciler.reconcile(body, wake=lambda: None))
    return events


def ready(status: Mapping[str, Any]) -> tuple[str, str, str]:
    found = next(c for c in status["conditions"] if c["type"] == "Ready")
    return found["status"], found["reason"], found["message"]


def test_a_refused_apply_keeps_the_served_version_in_status() -> None:
    # The Deployment pinned to 2 is written; the Service is refused (RBAC).
    cluster = Cluster([deployment("1")], refuse="Service")
    events = run_pass(cluster, BODY)
    assert cluster.status is not None
    assert cluster.status["production"]["version"] == "1", "status claimed a version that does not serve"
    assert cluster.status["history"] == BODY["status"]["history"], "no span was opened or closed"
    assert ready(cluster.status)[:2] == ("False", reasons.APPLY_FAILED)
    assert cluster.status["observedGeneration"] == 2
    assert [e.reason for e in events.posted] == [reasons.APPLY_FAILED]


def test_the_rollout_is_announced_once_it_really_happens() -> None:
    refused = Cluster([deployment("1")], refuse="Service")
    run_pass(refused, BODY)
    # The next pass gets through: the rollout to 2 is news, and posted as such.
    later = Cluster([deployment("1")])
    events = run_pass(later, {**BODY, "status": refused.status})
    assert reasons.ROLLOUT_STARTED in [e.reason for e in events.posted]
    assert later.status is not None
    assert later.status["production"]["version"] == "2"


def test_a_name_taken_by_someone_else_is_refused_and_left_alone() -> None:
    users_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sentiment", "namespace": "ml", "uid": "s-9"},
        "spec": {"selector": {"app": "theirs"}},
    }
    cluster = Cluster([deployment("1"), users_service])
    events = run_pass(cluster, BODY)
    assert cluster.applied == [], "nothing may be written while a name is taken"
    assert cluster.status is not None
    status, reason, message = ready(cluster.status)
    assert (status, reason) == ("False", reasons.NAME_CONFLICT)
    assert "Service 'sentiment'" in message
    assert "controlled by nothing" in message
    assert cluster.status["production"]["version"] == "1"
    assert [e.reason for e in events.posted] == [reasons.NAME_CONFLICT]


def test_a_name_controlled_by_another_resource_names_it() -> None:
    theirs = {
        **deployment("7"),
        "metadata": {
            **deployment("7")["metadata"],
            "ownerReferences": [{**OWNED, "uid": "other-uid", "name": "a"}],
        },
    }
    cluster = Cluster([theirs])
    run_pass(cluster, {**BODY, "status": {}})
    assert cluster.status is not None
    _, reason, message = ready(cluster.status)
    assert reason == reasons.NAME_CONFLICT
    assert "controlled by ModelDeployment 'a', uid other-uid" in message


class RefusingRegistry(Registry):
    """Reads work; every write is refused, as a read-only token's would be."""

    async def set_version_tags(self, *_: Any) -> None:
        from aliasroll.errors import RegistryAuthFailed

        raise RegistryAuthFailed("the registry at http://mlflow:5000 refused the credentials (HTTP 403)")


def test_a_registry_that_refuses_writes_never_holds_the_rollout() -> None:
    cluster = Cluster([deployment("1")])
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(cluster.objects.values()),
        registry=cast(RegistryPoller, RefusingRegistry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert ("Deployment", "sentiment-production") in cluster.applied, "the roll to version 2 goes on"
    assert cluster.status is not None
    assert cluster.status["production"]["version"] == "2"
    recorded = next(c for c in cluster.status["conditions"] if c["type"] == reasons.RECORDED)
    assert (recorded["status"], recorded["reason"]) == ("False", reasons.REGISTRY_WRITE_FAILED)
    assert "HTTP 403" in recorded["message"], "the registry's own words are kept"
    assert reasons.ROLLOUT_STARTED in [event.reason for event in events.posted]


def test_writes_that_keep_failing_with_a_server_error_show_in_status() -> None:
    """The Service IP range is full: the API server answers 500 to every create. Retried with
    backoff, and from the third pass in a row Ready says why, in the API server's words."""
    range_full = api_error(500, "Internal error occurred: failed to allocate a serviceIP: range is full")
    cluster = Cluster([], refuse="Service", refusal=range_full)
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(),
        registry=cast(RegistryPoller, Registry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    new = {**BODY, "status": {}}
    results = [asyncio.run(reconciler.reconcile(new, wake=lambda: None)) for _ in range(3)]
    assert all(result.failed is not None and result.back_off for result in results), "retried with backoff"
    assert cluster.status is not None, "a resource whose writes keep failing has a status"
    status, reason, message = ready(cluster.status)
    assert (status, reason) == ("False", reasons.APPLY_FAILED)
    assert "range is full" in message
    assert cluster.status["observedGeneration"] == 2
    assert [e.reason for e in events.posted] == [reasons.APPLY_FAILED]


def test_a_server_error_once_is_only_retried() -> None:
    cluster = Cluster([deployment("1")], refuse="Service", refusal=api_error(503, "etcd leader changed"))
    events = run_pass(cluster, BODY)
    assert cluster.status is None, "one failed pass is not worth a status write"
    assert events.posted == []


def test_an_object_the_cache_has_not_seen_yet_is_ours_not_a_conflict() -> None:
    """The pass before created the Deployment; the watch has not delivered it yet."""
    cluster = Cluster([deployment("2")])
    events = Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(),  # the cache, a moment behind
        registry=cast(RegistryPoller, Registry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert cluster.status is not None
    assert ready(cluster.status)[1] != reasons.NAME_CONFLICT
    assert ("Deployment", "sentiment-production") in cluster.applied, "applied again: idempotent"


def test_a_registry_error_is_left_to_the_poller() -> None:
    cluster = Cluster([deployment("1")])
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(cluster.objects.values()),
        registry=cast(RegistryPoller, DownRegistry()),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    result = asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert result.failed is not None
    assert not result.back_off, "the poller retries the registry and wakes the resource"
    assert result.next_in == 30.0, "the next pass at the poll interval (the default, 30 s)"


class DownRegistry(Registry):
    async def subscribe(self, **_: Any) -> ModelSnapshot:
        from aliasroll.errors import RegistryUnavailable

        return ModelSnapshot(model="sentiment", aliases=None, error=RegistryUnavailable("down"))
