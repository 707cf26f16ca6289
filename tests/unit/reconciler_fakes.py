"""One pass of the Reconciler against fakes: the API server as far as a pass needs it (Cluster), a
registry with @production on version 2, the events posted, and a ModelDeployment serving version 1.
Shared by the reconciler's tests in controller/, analysis/ and operator/."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httpx2
from builders import FixedObjects, info, written_status
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import api_info

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
