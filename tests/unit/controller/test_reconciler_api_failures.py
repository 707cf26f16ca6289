"""A pass that cannot see the cluster (its cache has not finished a first list) changes nothing: no
apply, no prune, no status, no event."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from aliasroll.controller.reconciler import PassResult, Reconciler
from aliasroll.errors import KubernetesUnavailable
from aliasroll.kube.cache import OwnedCache
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


def test_a_pass_on_a_cache_not_filled_yet_is_retried_and_changes_nothing() -> None:
    """The cache's first list is throttled (as just after a CRD is installed): the pass waits a
    little, then fails with the list's error, and writes nothing."""
    cluster, events = ThrottledCluster(), Events()

    async def scenario() -> PassResult:
        objects = OwnedCache(cast(AsyncClient, cluster), sync_wait=0.3)
        objects.start()
        try:
            reconciler = Reconciler(
                client=cast(AsyncClient, cluster),
                objects=objects,
                registry=cast(RegistryPoller, UnusedRegistry()),
                events=events,
                defaults=WorkloadDefaults(image="aliasroll/serving:test"),
            )
            return await reconciler.reconcile(BODY, wake=lambda: None)
        finally:
            await objects.stop()

    result = asyncio.run(scenario())
    assert isinstance(result.failed, KubernetesUnavailable)
    assert result.back_off, "retried with the scheduler's backoff"
    assert "storage is (re)initializing" in result.failed.message
    assert cluster.writes == []
    assert events.posted == []
