"""A pass that cannot see the cluster changes nothing: no apply, no prune, no status, no event."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from aliasroll.controller.reconciler import Reconciler
from aliasroll.errors import KubernetesUnavailable
from aliasroll.planning.state import EventRecord
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller

BODY = {
    "apiVersion": "aliasroll.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"namespace": "ml", "name": "sentiment", "uid": "u-1", "generation": 1},
    "spec": {"model": {"name": "sentiment"}, "registry": {"trackingUri": "http://mlflow:5000"}},
}


class ThrottledCluster:
    """Answers every list with the 429 the API server gives just after a CRD is installed."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def list(self, resource: Any, **_: Any) -> Any:
        request = httpx2.Request("GET", "https://127.0.0.1:6443/apis/x")
        status = {"kind": "Status", "message": "storage is (re)initializing", "code": 429}
        response = httpx2.Response(429, json=status, headers={"Retry-After": "1"}, request=request)
        raise ApiError(request=request, response=response)

    async def patch(self, *args: Any, **_: Any) -> None:
        self.writes.append("patch")

    async def delete(self, *args: Any, **_: Any) -> None:
        self.writes.append("delete")


class Events:
    def __init__(self) -> None:
        self.posted: list[EventRecord] = []

    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        self.posted.append(event)


class UnusedRegistry:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the registry was consulted ({name}) though the cluster could not be read")

    async def set_alias(self, *_: Any) -> None:
        pass

    async def delete_alias(self, *_: Any) -> None:
        pass

    async def set_version_tags(self, *_: Any) -> None:
        pass


def test_a_throttled_list_is_retried_and_changes_nothing() -> None:
    cluster, events = ThrottledCluster(), Events()
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        registry=cast(RegistryPoller, UnusedRegistry()),
        events=events,
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    result = asyncio.run(reconciler.reconcile(BODY, wake=lambda: None))
    assert isinstance(result.failed, KubernetesUnavailable)
    assert result.next_in == 1.0  # the server's Retry-After
    assert "storage is (re)initializing" in result.failed.message
    assert cluster.writes == []
    assert events.posted == []
