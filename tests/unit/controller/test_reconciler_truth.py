"""A pass that could not change the cluster says so, and says nothing else: status keeps naming what
runs (never the plan that was refused), and objects it does not control are never written."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from builders import FixedObjects
from lightkube import AsyncClient
from reconciler_fakes import (
    BODY,
    OWNED,
    Cluster,
    Events,
    Registry,
    api_error,
    deployment,
    ready,
    run_pass,
)

from aliasroll import reasons
from aliasroll.controller.reconciler import Reconciler
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import ModelSnapshot, RegistryPoller


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
