"""What the poller keeps per registry endpoint, and for how long: a refused destination is never
followed (an answer at once, no loop, no retries); an endpoint's state (its loop, threads, version
cache, size, kicks, and so the credentials its key holds) goes with its last follower; and a
registry whose search page is larger than the answer budget is read model by model."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from builders import spec
from scripted_registry import REGISTRY, Follower, ScriptedRegistry, until

from aliasroll.conditions import FALSE
from aliasroll.egress import Destinations
from aliasroll.errors import DestinationRefused, RegistryAnswerTooLarge
from aliasroll.planning.health import registry_condition
from aliasroll.planning.state import RegistryView
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import SLOW_SWEEP_PAUSE, RegistryPoller
from aliasroll.registry.types import Credentials, Endpoint

LOOPBACK = Endpoint("http://127.0.0.1:5000")
METADATA = Endpoint("http://169.254.169.254/latest")


def endpoint_state(poller: RegistryPoller, endpoint: Endpoint) -> dict[str, object]:
    """Everything the poller keeps that names `endpoint` (empty once nobody follows it)."""
    found: dict[str, object] = {}
    for name, value in vars(poller).items():
        if not isinstance(value, dict):
            continue
        keys = [
            key for key in value if key == endpoint or (isinstance(key, tuple) and key and key[0] == endpoint)
        ]
        if keys:
            found[name] = keys
    return found


@pytest.fixture
def registry() -> ScriptedRegistry:
    return ScriptedRegistry({"m1": {"production": "1"}, "m2": {"production": "4"}})


async def test_a_refused_destination_is_answered_at_once_and_never_called(registry: ScriptedRegistry) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), destinations=Destinations.parse("*"))
    try:
        follower = Follower(poller, LOOPBACK, "m1", interval=1)
        snapshot = await asyncio.wait_for(follower.snapshot(), timeout=1)
        assert isinstance(snapshot.error, DestinationRefused)
        assert snapshot.error.reason == "DestinationRefused"
        assert snapshot.error.message.startswith(
            "the registry at http://127.0.0.1:5000 is not called: 127.0.0.1 is a loopback address"
        )
        assert not snapshot.error.transient, "nothing to retry until the spec or the settings change"
        with pytest.raises(DestinationRefused):
            await poller.version(METADATA, "m1", "1", ttl=1)
        with pytest.raises(DestinationRefused):
            await poller.set_version_tags(METADATA, "m1", "1", {"k": "v"})
        await asyncio.sleep(0.05)
        assert registry.direct_reads == [], "nothing was sent"
        assert endpoint_state(poller, LOOPBACK) == {}, "no loop, no entry: no retry loop either"
        assert endpoint_state(poller, METADATA) == {}
    finally:
        await poller.close()


async def test_a_resource_moved_to_a_refused_destination_stops_following_the_old_one(
    registry: ScriptedRegistry,
) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), destinations=Destinations.parse("*"))
    try:
        before = await poller.subscribe(
            subscriber="uid-1", endpoint=REGISTRY, model="m1", interval=30, wake=lambda: None
        )
        assert before.aliases == {"production": "1"}
        after = await poller.subscribe(
            subscriber="uid-1", endpoint=METADATA, model="m1", interval=30, wake=lambda: None
        )
        assert isinstance(after.error, DestinationRefused)
        await until(lambda: endpoint_state(poller, REGISTRY) == {})
    finally:
        await poller.close()


async def test_an_endpoints_state_goes_with_its_last_follower(registry: ScriptedRegistry) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    old = Endpoint("http://registry:5000", Credentials(token="before-rotation"))
    new = Endpoint("http://registry:5000", Credentials(token="after-rotation"))
    try:
        for uid in ("a", "b"):
            await poller.subscribe(subscriber=uid, endpoint=old, model="m1", interval=30, wake=lambda: None)
        assert await poller.version(old, "m1", "1", ttl=30) is not None
        await poller.set_version_tags(old, "m1", "1", {"k": "v"})
        assert endpoint_state(poller, old)  # followed: loop, lane, kick, cached version

        poller.unsubscribe("a")
        await asyncio.sleep(0.05)
        assert "_versions" in endpoint_state(poller, old), "still followed by b"

        # The Secret rotated: b follows the same registry with the new credentials.
        await poller.subscribe(subscriber="b", endpoint=new, model="m1", interval=30, wake=lambda: None)
        await until(lambda: endpoint_state(poller, old) == {})
        assert endpoint_state(poller, new)

        poller.unsubscribe("b")
        await until(lambda: endpoint_state(poller, new) == {})
    finally:
        await poller.close()


async def test_a_write_for_an_endpoint_nobody_follows_leaves_nothing_behind(
    registry: ScriptedRegistry,
) -> None:
    # The last spans of a deleted resource are tagged after it is gone: nobody follows its endpoint.
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    gone = Endpoint("http://registry:5000", Credentials(token="deleted-resource"))
    try:
        await poller.set_version_tags(gone, "m1", "1", {"k": "v"})
        assert await poller.version(gone, "m1", "1", ttl=30) is not None
        assert endpoint_state(poller, gone) == {}
    finally:
        await poller.close()


async def test_a_registry_whose_sweep_is_over_budget_is_read_model_by_model(
    registry: ScriptedRegistry,
) -> None:
    registry.sweep_error = RegistryAnswerTooLarge("answered more than 4 MiB")
    poller = RegistryPoller(cast(RegistryClient, registry), sweep_threshold=2, batch_window=0.05)
    try:
        followers = [Follower(poller, REGISTRY, model, interval=30) for model in ("m1", "m2")]
        answers = await asyncio.wait_for(asyncio.gather(*(f.snapshot() for f in followers)), timeout=5)
        assert [answer.aliases for answer in answers] == [{"production": "1"}, {"production": "4"}]
        assert registry.sweeps == 1
        assert sorted(registry.direct_reads) == ["m1", "m2"]
        assert poller._sweeps_off_until[REGISTRY] > asyncio.get_running_loop().time() + SLOW_SWEEP_PAUSE / 2
    finally:
        await poller.close()


def test_a_refused_destination_reads_as_a_registry_condition() -> None:
    refused = DestinationRefused("the registry at http://127.0.0.1:5000 is not called: loopback")
    condition = registry_condition(spec(), RegistryView(model="m", error=refused))
    assert (condition.status, condition.reason) == (FALSE, "DestinationRefused")
    assert condition.message == refused.message
