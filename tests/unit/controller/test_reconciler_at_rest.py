"""What a pass costs when nothing changes: a resource at rest waits for a wake (its model's poller,
the watch on its objects) with only a rare timer of its own, and a restarted operator does not write
again the records the registry already holds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import pytest
from builders import FixedObjects, info
from lightkube import AsyncClient
from reconciler_fakes import BODY, Cluster, Events, Registry, deployment

from aliasroll import reasons
from aliasroll.controller.reconciler import PassResult, Reconciler
from aliasroll.planning.health import at_rest
from aliasroll.planning.next_pass import AT_REST_PASS_SECONDS
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller

POLL = 30.0  # BODY's pollInterval: the default


class TaggingRegistry(Registry):
    """@production on version 2; keeps the tags written, and shows them when a version is read."""

    def __init__(self, held: dict[str, dict[str, str]] | None = None) -> None:
        self.held = held if held is not None else {}
        self.writes: list[tuple[str, dict[str, str]]] = []

    async def version(self, endpoint: Any, model: str, version: str, **_: Any) -> Any:
        tags = tuple(sorted(self.held.get(version, {}).items()))
        return replace(info(version), tags=tags)

    async def set_version_tags(
        self, endpoint: Any, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        self.writes.append((version, dict(tags)))
        self.held.setdefault(version, {}).update(tags)


def one_pass(cluster: Cluster, registry: Registry, body: Mapping[str, Any]) -> PassResult:
    """A pass of a new Reconciler: an operator process just started."""
    reconciler = Reconciler(
        client=cast(AsyncClient, cluster),
        objects=FixedObjects(cluster.objects.values()),
        registry=cast(RegistryPoller, registry),
        events=Events(),
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    return asyncio.run(reconciler.reconcile(body, wake=lambda: None))


def test_a_resource_serving_as_its_alias_says_waits_for_a_wake() -> None:
    cluster = Cluster([deployment("2")])
    result = one_pass(cluster, TaggingRegistry(), BODY)
    assert cluster.status is not None
    assert at_rest(cluster.status)
    assert result.next_in == AT_REST_PASS_SECONDS


def test_a_resource_rolling_out_keeps_its_poll_interval() -> None:
    cluster = Cluster([deployment("1")])  # @production moved to 2: the roll starts
    result = one_pass(cluster, TaggingRegistry(), BODY)
    assert cluster.status is not None
    assert not at_rest(cluster.status)
    assert result.next_in == POLL


def test_a_restarted_operator_writes_no_record_the_registry_holds() -> None:
    cluster = Cluster([deployment("2")])
    registry = TaggingRegistry()
    one_pass(cluster, registry, BODY)
    assert registry.writes, "the first operator records where version 2 serves"
    settled = {**BODY, "status": cluster.status}
    registry.writes.clear()
    one_pass(cluster, registry, settled)
    assert registry.writes == [], "the records are in the registry already"


def test_a_record_the_registry_lacks_is_written_again() -> None:
    cluster = Cluster([deployment("2")])
    registry = TaggingRegistry()
    one_pass(cluster, registry, BODY)
    settled = {**BODY, "status": cluster.status}
    forgetful = TaggingRegistry(held={})  # someone removed the tags, or another registry
    one_pass(cluster, forgetful, settled)
    assert forgetful.writes == registry.writes, "every record comes back, once"


def condition(type_: str, status: str, reason: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


RESTING = [
    condition(reasons.READY, "True", reasons.SERVING),
    condition(reasons.PROGRESSING, "False", reasons.ROLLOUT_COMPLETE),
    condition(reasons.ALIASES_RESOLVED, "True", reasons.RESOLVED),
    condition(reasons.REGISTRY_REACHABLE, "True", reasons.REGISTRY_ANSWERED),
]


@pytest.mark.parametrize(
    ("name", "changed", "resting"),
    [
        ("serving, rolled out, resolved, answered", None, True),
        ("scaled to zero", condition(reasons.READY, "True", reasons.SCALED_TO_ZERO), True),
        ("rolling out", condition(reasons.READY, "False", reasons.ROLLING_OUT), False),
        ("stalled", condition(reasons.PROGRESSING, "False", reasons.ROLLOUT_STALLED), False),
        ("suspended", condition(reasons.PROGRESSING, "False", reasons.SUSPENDED), False),
        (
            "a version not ready",
            condition(reasons.ALIASES_RESOLVED, "False", reasons.VERSION_NOT_READY),
            False,
        ),
        (
            "registry down",
            condition(reasons.REGISTRY_REACHABLE, "False", reasons.REGISTRY_UNREACHABLE),
            False,
        ),
        ("records refused", condition(reasons.RECORDED, "False", reasons.REGISTRY_WRITE_FAILED), False),
        ("records written", condition(reasons.RECORDED, "True", "Recorded"), True),
    ],
)
def test_at_rest(name: str, changed: dict[str, str] | None, resting: bool) -> None:
    conditions = [c for c in RESTING if changed is None or c["type"] != changed["type"]]
    if changed is not None:
        conditions.append(changed)
    assert at_rest({"conditions": conditions}) is resting, name


def test_no_conditions_is_not_rest() -> None:
    assert not at_rest({})
