"""A pass whose resource the API server no longer has (a deletion the watch missed) says so, so the
scheduler ends its worker instead of re-applying children of a dead uid every poll."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable, Mapping
from typing import Any, cast

import httpx2
from builders import FixedObjects, written_status
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from aliasroll.controller.reconciler import Reconciler
from aliasroll.planning.state import EventRecord
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import ModelSnapshot, RegistryPoller, Wake
from aliasroll.registry.types import Endpoint, VersionInfo

BODY = {
    "apiVersion": "aliasroll.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"namespace": "ml", "name": "sentiment", "uid": "dead-uid", "generation": 1},
    "spec": {"model": {"name": "sentiment"}, "registry": {"trackingUri": "http://mlflow:5000"}},
}


class ClusterWithoutTheResource:
    """Lists nothing, accepts children, and answers 404 for the ModelDeployment's status."""

    def __init__(self) -> None:
        self.patched: list[str] = []

    async def _nothing(self) -> AsyncIterator[Any]:
        for item in ():
            yield item

    def list(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
        return self._nothing()

    async def get(self, resource: Any, name: str, **_: Any) -> Any:
        request = httpx2.Request("GET", f"https://127.0.0.1:6443/x/{name}")
        status = {"kind": "Status", "reason": "NotFound", "code": 404, "message": "not found"}
        raise ApiError(request=request, response=httpx2.Response(404, json=status, request=request))

    async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
        if name == "sentiment" and written_status(body) is not None:
            request = httpx2.Request("PATCH", "https://127.0.0.1:6443/apis/aliasroll.io/x/status")
            status = {
                "kind": "Status",
                "reason": "NotFound",
                "code": 404,
                "message": 'modeldeployments.aliasroll.io "sentiment" not found',
                "details": {"name": "sentiment", "group": "aliasroll.io", "kind": "modeldeployments"},
            }
            raise ApiError(request=request, response=httpx2.Response(404, json=status, request=request))
        self.patched.append(name)

    async def delete(self, *args: Any, **_: Any) -> None:
        raise AssertionError("nothing to prune")


class OneVersionRegistry:
    async def subscribe(
        self, *, subscriber: Hashable, endpoint: Endpoint, model: str, interval: float, wake: Wake
    ) -> ModelSnapshot:
        return ModelSnapshot(model=model, aliases={"production": "1"}, error=None)

    async def version(self, endpoint: Endpoint, model: str, version: str, *, ttl: float) -> VersionInfo:
        return VersionInfo(model=model, version=version, status="READY", run_id=None, source=None)

    async def set_alias(self, *_: Any) -> None:
        pass

    async def delete_alias(self, *_: Any) -> None:
        pass

    async def set_version_tags(self, *_: Any) -> None:
        pass


class Events:
    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        pass


def test_a_status_write_answered_404_reports_the_resource_gone() -> None:
    reconciler = Reconciler(
        client=cast(AsyncClient, ClusterWithoutTheResource()),
        objects=FixedObjects(),
        registry=cast(RegistryPoller, OneVersionRegistry()),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    result = asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert result.gone
    assert result.failed is None, "not a failure to back off from: the worker ends"


class ClusterReloadingItsHandlers(ClusterWithoutTheResource):
    """Answers the status write with a bare 404 page, as while a CRD is created or deleted."""

    async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
        if name == "sentiment" and written_status(body) is not None:
            request = httpx2.Request("PATCH", "https://127.0.0.1:6443/apis/aliasroll.io/x/status")
            raise httpx2.HTTPStatusError(
                "404 page not found",
                request=request,
                response=httpx2.Response(404, text="404 page not found", request=request),
            )
        self.patched.append(name)


def test_a_bare_404_is_not_taken_for_a_deletion() -> None:
    reconciler = Reconciler(
        client=cast(AsyncClient, ClusterReloadingItsHandlers()),
        objects=FixedObjects(),
        registry=cast(RegistryPoller, OneVersionRegistry()),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    result = asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert not result.gone, "a worker must not stop on a 404 that names no object"
    assert result.failed is not None, "retried with backoff"


class ClusterWithAnotherObjectOfTheName(ClusterWithoutTheResource):
    """The resource was deleted and created again under its name during the pass: the status write's
    uid test fails (HTTP 422), and the object by that name has another uid."""

    async def get(self, resource: Any, name: str, **_: Any) -> Any:
        if name == "sentiment":
            return {"metadata": {"name": "sentiment", "uid": "a-new-uid"}}
        return await super().get(resource, name)

    async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
        if name == "sentiment" and written_status(body) is not None:
            request = httpx2.Request("PATCH", "https://127.0.0.1:6443/apis/aliasroll.io/x/status")
            status = {"kind": "Status", "reason": "Invalid", "code": 422, "message": "the request is invalid"}
            raise ApiError(request=request, response=httpx2.Response(422, json=status, request=request))
        self.patched.append(name)


def test_a_pass_never_writes_status_onto_a_recreated_object_of_the_same_name() -> None:
    reconciler = Reconciler(
        client=cast(AsyncClient, ClusterWithAnotherObjectOfTheName()),
        objects=FixedObjects(),
        registry=cast(RegistryPoller, OneVersionRegistry()),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    result = asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert result.gone, "the object by that name is another one: this resource is gone"
    assert result.failed is None
