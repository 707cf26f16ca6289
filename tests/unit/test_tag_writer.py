"""The version tags' writer (controller.records): tags wait for rollouts to pause, at most
`max_delay`; each outcome wakes the resource once; nothing is written twice or after a forget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from aliasroll import reasons
from aliasroll.conditions import UNKNOWN
from aliasroll.config import OperatorConfig
from aliasroll.controller.reconciler import _moved_on
from aliasroll.controller.records import DeferredTags, TagsState
from aliasroll.errors import RegistryAuthFailed
from aliasroll.planning import planner
from aliasroll.planning.health import at_rest
from aliasroll.planning.records import TagVersion
from aliasroll.registry.poller import RegistryPoller
from aliasroll.registry.types import Endpoint
from aliasroll.spec import ResourceRef

OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1")
ENDPOINT = Endpoint("http://mlflow:5000")
SERVED = TagVersion("2", {"aliasroll.io/served/ml/sentiment/production/20261206T100000Z": "now"})


class Registry:
    """Records tag writes; refuses them while `refusal` is set; `held` is what versions hold."""

    def __init__(self, held: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.held = {version: dict(tags) for version, tags in (held or {}).items()}
        self.writes: list[tuple[str, dict[str, str]]] = []
        self.refusal: Exception | None = None

    async def version(self, endpoint: Endpoint, model: str, version: str, **_: Any) -> Any:
        class Info:
            tags = tuple(self.held.get(version, {}).items())

        return Info()

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.writes.append((version, dict(tags)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def yield_once(_: float) -> None:
    await asyncio.sleep(0)  # the writer looks at the (fake) clock again at each turn


@contextlib.asynccontextmanager
async def writing(
    registry: Registry, clock: Clock, *, max_delay: float = 60.0, burst: int = 1
) -> AsyncIterator[DeferredTags]:
    """A writer on the fake clock, stopped at the end (by default one pass that moved a
    rollout on is a burst)."""
    tags = DeferredTags(
        cast(RegistryPoller, registry),
        max_delay=max_delay,
        quiet=2.0,
        burst=burst,
        writers=2,
        clock=clock,
        sleep=yield_once,
    )
    try:
        yield tags
    finally:
        await tags.stop()


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_tags_wait_until_rollouts_pause_then_wake_the_resource_once() -> None:
    async def scenario() -> None:
        registry, clock, woken = Registry(), Clock(), []
        async with writing(registry, clock) as tags:
            tags.progressed()
            state = await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            assert state == TagsState(pending=True)
            clock.now += 1.5
            tags.progressed()  # another resource rolls out: still not the tags' turn
            clock.now += 1.5
            await settle()
            assert registry.writes == [], "written while rollouts were under way"
            clock.now += 1.0  # 2 s since the last rollout
            await settle()
            assert registry.writes == [("2", dict(SERVED.tags))]
            assert woken == [1]
            again = await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            assert again == TagsState()
            await settle()
            assert len(registry.writes) == 1, "written once"
            assert woken == [1], "told once"

    run(scenario)


def test_a_few_passes_now_and_then_are_no_burst() -> None:
    """Canaries measuring every few seconds hold no tags back; a burst of rollouts does."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        async with writing(registry, clock, burst=5) as tags:
            for _ in range(4):
                tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            assert len(registry.writes) == 1, "four passes in 2 s are no burst"
            for _ in range(5):
                clock.now += 0.1
                tags.progressed()
            other = ResourceRef(namespace="ml", name="other", uid="uid-2")
            await tags.submit(other, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            assert len(registry.writes) == 1, "five passes in 2 s are a burst"
            clock.now += 1.95  # all but the last of those passes are over 2 s old: no burst
            await settle()
            assert len(registry.writes) == 2

    run(scenario)


def test_max_delay_bounds_the_wait_under_endless_rollouts() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        async with writing(registry, clock, max_delay=10.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            for _ in range(9):
                clock.now += 1.0
                tags.progressed()
                await settle()
            assert registry.writes == []
            clock.now += 1.0
            tags.progressed()
            await settle()
            assert len(registry.writes) == 1

    run(scenario)


def test_no_delay_writes_at_once() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        async with writing(registry, clock, max_delay=0.0) as tags:
            tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            assert len(registry.writes) == 1

    run(scenario)


def test_a_refusal_is_said_and_retried_by_each_pass_and_told_once() -> None:
    async def scenario() -> None:
        registry, clock, woken = Registry(), Clock(), []
        registry.refusal = RegistryAuthFailed("the registry refused the credentials (HTTP 403)")
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            await settle()
            assert woken == [1], "the first refusal wakes the resource, to say it"
            state = await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            assert state.pending
            assert state.problems
            assert "HTTP 403" in state.problems[0]
            await settle()
            assert woken == [1], "the same refusal again: the next pass retries, no wake"
            registry.refusal = None
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            await settle()
            assert registry.writes
            assert woken == [1, 1]
            assert await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None) == TagsState()

    run(scenario)


def test_tags_the_version_holds_are_not_written_again() -> None:
    """A restarted operator: the registry already holds the tag."""

    async def scenario() -> None:
        registry, clock = Registry(held={"2": SERVED.tags}), Clock()
        async with writing(registry, clock, max_delay=0.0) as tags:
            assert await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None) == TagsState()
            await settle()
            assert registry.writes == []

    run(scenario)


def test_forgotten_resources_tags_are_dropped() -> None:
    """Deleted, or this replica stopped leading: the next leader plans the tags again."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        async with writing(registry, clock) as tags:
            tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            tags.forget(OWNER.uid)
            clock.now += 100.0
            await settle()
            assert registry.writes == []
            assert tags.queued == 0

    run(scenario)


def test_a_registry_that_hangs_holds_only_its_own_tags_back() -> None:
    async def scenario() -> None:
        hung, clock = asyncio.Event(), Clock()

        class Registries(Registry):
            async def set_version_tags(
                self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
            ) -> None:
                if endpoint.tracking_uri == "http://hangs:5000":
                    await hung.wait()
                await super().set_version_tags(endpoint, model, version, tags)

        registry = Registries()
        async with writing(registry, clock, max_delay=0.0) as tags:
            for n in range(5):  # more than the writers a registry has
                owner = ResourceRef(namespace="ml", name=f"hung-{n}", uid=f"hung-{n}")
                await tags.submit(owner, Endpoint("http://hangs:5000"), "m", [SERVED], lambda: None)
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            assert registry.writes == [("2", dict(SERVED.tags))], "the other registry's tag is written"

    run(scenario)


def test_a_closed_fence_drops_the_write_and_the_writer_goes_on() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        registry.refusal = asyncio.CancelledError("not leading: no write")
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            registry.refusal = None
            other = ResourceRef(namespace="ml", name="other", uid="uid-2")
            await tags.submit(other, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            assert len(registry.writes) == 1, "the writer survived the fence"

    run(scenario)


def test_pending_tags_say_unknown_and_leave_the_resource_at_rest() -> None:
    serving = {
        "conditions": [
            {"type": reasons.READY, "status": "True", "reason": reasons.SERVING},
            {"type": reasons.PROGRESSING, "status": "False", "reason": reasons.ROLLOUT_COMPLETE},
            {"type": reasons.ALIASES_RESOLVED, "status": "True", "reason": "Resolved"},
            {"type": reasons.REGISTRY_REACHABLE, "status": "True", "reason": "Reachable"},
        ]
    }
    status = planner.with_records(
        serving, {}, problems=[], pending=True, wrote=True, owner=OWNER, now=datetime.now(UTC)
    )
    recorded = next(c for c in status["conditions"] if c["type"] == reasons.RECORDED)
    assert (recorded["status"], recorded["reason"]) == (UNKNOWN, reasons.RECORDS_PENDING)
    assert at_rest(status), "the writer wakes it when the tags are written: no timer needed"


def test_the_delay_is_configured_and_bad_values_say_what_to_fix() -> None:
    assert OperatorConfig.from_env({}).records_max_delay_seconds == 120.0
    assert (
        OperatorConfig.from_env({"ALIASROLL_RECORDS_MAX_DELAY_SECONDS": "0"}).records_max_delay_seconds == 0.0
    )
    with pytest.raises(SystemExit, match="ALIASROLL_RECORDS_MAX_DELAY_SECONDS='soon' is not a number"):
        OperatorConfig.from_env({"ALIASROLL_RECORDS_MAX_DELAY_SECONDS": "soon"})
    with pytest.raises(SystemExit, match="must be zero or more"):
        OperatorConfig.from_env({"ALIASROLL_RECORDS_MAX_DELAY_SECONDS": "-5"})


def test_a_status_that_only_says_the_records_moved_does_not_hold_the_tags() -> None:
    """The pass a written tag wakes changes Recorded only: the other tags need not wait for it."""

    def recorded(status: str, reason: str) -> dict[str, str]:
        return {"type": reasons.RECORDED, "status": status, "reason": reason}

    ready = {"type": reasons.READY, "status": "True", "reason": reasons.SERVING}
    pending = {"replicas": 1, "conditions": [ready, recorded(UNKNOWN, reasons.RECORDS_PENDING)]}
    written = {"replicas": 1, "conditions": [ready, recorded("True", reasons.RECORDS_WRITTEN)]}
    assert not _moved_on(written, pending)
    assert _moved_on({**written, "replicas": 2}, pending)
    rolling = {"type": reasons.READY, "status": "False", "reason": "RollingOut"}
    assert _moved_on({**pending, "conditions": [rolling, *pending["conditions"][1:]]}, pending)
