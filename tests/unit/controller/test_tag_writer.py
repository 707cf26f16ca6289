"""The version tags' writer (controller.tag_writer): tags wait for rollouts to pause, at most
`max_delay`; the last planned value of a tag wins and no older one lands after it; a record is
retried by the writer (with a capped backoff) until written or abandoned, whatever the passes plan
meanwhile; a refusal wakes its resource once, whatever its words; memory is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from builders import spec
from prometheus_client import REGISTRY

from aliasroll import reasons
from aliasroll.conditions import UNKNOWN
from aliasroll.config import OperatorConfig
from aliasroll.controller.tag_writer import (
    LANDING_SECONDS,
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    DeferredTags,
    TagsState,
)
from aliasroll.errors import RegistryAuthFailed, RegistryUnavailable
from aliasroll.planning import planner
from aliasroll.planning.health import at_rest
from aliasroll.planning.next_pass import moved_on as _moved_on
from aliasroll.planning.registry_writes import TagVersion, served_tags
from aliasroll.registry.poller import RegistryPoller
from aliasroll.registry.types import Credentials, Endpoint
from aliasroll.spec import ResourceRef

OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1")
ENDPOINT = Endpoint("http://mlflow:5000")
SPAN = "aliasroll.io/served/ml/sentiment/production/20261206T100000Z"
SERVED = TagVersion("2", {SPAN: "2026-12-06T10:00:00Z to now (serving)"})
ENDED = TagVersion("2", {SPAN: "2026-12-06T10:00:00Z to 2026-12-06T11:00:00Z"})
OUTCOME = TagVersion(
    "3",
    {
        "aliasroll.io/canary.outcome": "aborted",
        "aliasroll.io/canary.time": "2026-12-06T12:00:00Z",
        "aliasroll.io/canary.deployment": "ml/sentiment",
    },
)


class Registry:
    """Records tag writes; refuses them while `refusal` is set (or as `refuse` says); `held` is what
    versions held when the writer started; `landed` what they hold now."""

    def __init__(self, held: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.held = {version: dict(tags) for version, tags in (held or {}).items()}
        self.writes: list[tuple[str, dict[str, str]]] = []
        self.attempts: list[tuple[str, dict[str, str]]] = []
        self.landed: dict[tuple[str, str], str] = {}
        self.refusal: BaseException | None = None
        self.refuse: Callable[[str, Mapping[str, str]], BaseException | None] | None = None

    async def version(self, endpoint: Endpoint, model: str, version: str, **_: Any) -> Any:
        class Info:
            tags = tuple(self.held.get(version, {}).items())

        return Info()

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        self.attempts.append((version, dict(tags)))
        refusal = self.refuse(version, tags) if self.refuse is not None else self.refusal
        if refusal is not None:
            raise refusal
        self.writes.append((version, dict(tags)))
        self.landed.update({(version, key): value for key, value in tags.items()})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def yield_once(_: float) -> None:
    await asyncio.sleep(0)  # the writer looks at the (fake) clock again at each turn


@contextlib.asynccontextmanager
async def writing(
    registry: Registry, clock: Clock, *, max_delay: float = 60.0, burst: int = 1, **options: Any
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
        **options,
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


def read_only(version: str, tags: Mapping[str, str]) -> BaseException:
    """Read-only credentials, refused in the client's words: they name the tag and the version."""
    (key,) = tags
    return RegistryAuthFailed(
        f"the registry at http://mlflow:5000 did not let the operator tag version {version} of 'm' "
        f"(the registry refused the credentials for tag {key!r} of version {version} (HTTP 403))"
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


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


def test_a_refusal_is_said_told_once_and_retried_by_the_writer() -> None:
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
            assert len(registry.attempts) == 1, "a pass retries nothing: the writer does, later"
            clock.now += RETRY_FIRST_SECONDS
            await settle()
            assert len(registry.attempts) == 2
            assert woken == [1], "the same refusal again: no wake"
            registry.refusal = None
            clock.now += 2 * RETRY_FIRST_SECONDS
            await settle()
            assert registry.writes == [("2", dict(SERVED.tags))], "retried without a pass"
            assert woken == [1, 1], "written: woken to say so"
            assert await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None) == TagsState()

    run(scenario)


def test_refusals_in_other_words_wake_a_resource_once_and_say_the_same() -> None:
    """Read-only credentials and two tags (two spans): the refusals' words differ, tag by tag; a
    resource woken on each new text was passed hundreds of times a second, each pass queueing the
    tags again. Now: one wake, the writer retries with backoff, and every pass says the same."""

    async def scenario() -> None:
        registry, clock, woken = Registry(), Clock(), []
        registry.refuse = read_only
        history = [
            TagVersion("1", {SPAN: "2026-12-06T10:00:00Z to 2026-12-06T11:00:00Z"}),
            TagVersion("2", {SPAN.replace("100000Z", "110000Z"): "2026-12-06T11:00:00Z to now (serving)"}),
        ]
        async with writing(registry, clock, max_delay=0.0) as tags:
            told = [await tags.submit(OWNER, ENDPOINT, "m", history, lambda: woken.append(1))]
            for _ in range(600):  # 10 minutes, second by second; a wake brings a pass
                clock.now += 1.0
                await settle()
                if woken:
                    woken.clear()
                    told.append(await tags.submit(OWNER, ENDPOINT, "m", history, lambda: woken.append(1)))
            assert len(told) == 2, f"{len(told)} passes: the first, and the one the refusal woke"
            assert told[1].problems
            first = told[1].problems[0].split(" (")[0]
            # Passes for other reasons (a poll timer), after one tag's refusal or the other's.
            said = set()
            for _ in range(40):
                clock.now += 7.0
                await settle()
                said.add((await tags.submit(OWNER, ENDPOINT, "m", history, lambda: None)).problems)
            assert len(said) == 1, f"the same words, whichever tag was refused last: {said}"
            (problem,) = said.pop()
            assert problem.startswith(first), "the first refusal, until it clears"
            assert "2 version tag writes are refused" in problem
            # Each tag tried after 5, 10, 20, ... s, at most 300 s apart: a handful in 15 minutes.
            assert len(registry.attempts) <= 2 * 9, len(registry.attempts)
            assert woken == []

    run(scenario)


def test_refused_tags_are_retried_on_a_capped_backoff_and_passes_do_not_hurry_them() -> None:
    async def scenario() -> None:
        registry, clock, woken = Registry(), Clock(), []
        registry.refuse = read_only
        when: list[float] = []

        def attempted(version: str, tags: Mapping[str, str]) -> BaseException:
            when.append(clock.now)
            return read_only(version, tags)

        registry.refuse = attempted
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
            await settle()
            for _ in range(10):  # passes for other reasons (its status moved, its poll timer)
                await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: woken.append(1))
                await settle()
            assert len(when) == 1, "passes retry nothing"
            for _ in range(720):  # an hour, 5 s at a time, without passes
                clock.now += 5.0
                await settle()
            gaps = [later - earlier for earlier, later in itertools.pairwise(when)]
            assert gaps[0] == pytest.approx(RETRY_FIRST_SECONDS, abs=5.0)
            assert gaps == sorted(gaps), "the backoff grows"
            assert max(gaps) <= RETRY_MAX_SECONDS + 5.0, "and is capped"
            assert len(when) <= 1 + 6 + 3600 / RETRY_MAX_SECONDS
            assert woken == [1], "one wake, at the first refusal"
            registry.refuse = None
            for _ in range(int(RETRY_MAX_SECONDS / 5.0) + 1):
                clock.now += 5.0
                await settle()
            assert registry.writes == [("2", dict(SERVED.tags))]
            assert woken == [1, 1], "written at last: woken to say Recorded=True"

    run(scenario)


def test_an_outcome_refused_once_is_written_after_canary_moved_on() -> None:
    """The registry fails the outcome's write once; before the next pass @canary names another
    version, so status.lastCanary, and the passes' plans, no longer hold the outcome."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        registry.refusal = RegistryUnavailable("the registry at http://mlflow:5000 failed (HTTP 503)")
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED, OUTCOME], lambda: None)
            await settle()
            assert registry.writes == []
            registry.refusal = None
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)  # @canary moved on
            for _ in range(12):
                clock.now += 5.0
                await settle()
            assert all(registry.landed.get(("3", key)) == value for key, value in OUTCOME.tags.items())
            assert registry.landed[("2", SPAN)] == SERVED.tags[SPAN]
            assert tags.queued == 0

    run(scenario)


def test_an_older_value_never_lands_after_a_newer_one() -> None:
    """A span's tag is being written ("to now (serving)", slowly) when the span closes: the closing
    value waits for that write, then goes; 4 writers no longer race them."""

    async def scenario() -> None:
        clock, release = Clock(), asyncio.Event()
        started: list[dict[str, str]] = []

        class Slow(Registry):
            async def set_version_tags(
                self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
            ) -> None:
                started.append(dict(tags))
                if len(started) == 1:
                    await release.wait()
                await super().set_version_tags(endpoint, model, version, tags)

        registry = Slow()
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            await tags.submit(OWNER, ENDPOINT, "m", [ENDED], lambda: None)
            await settle()
            assert started == [dict(SERVED.tags)], "no write of the key while one is under way"
            release.set()
            await settle()
            assert registry.writes == [("2", dict(SERVED.tags)), ("2", dict(ENDED.tags))]
            assert registry.landed[("2", SPAN)] == ENDED.tags[SPAN], "the last planned value wins"
            assert tags.queued == 0

    run(scenario)


def test_a_write_without_an_answer_holds_its_key_until_it_may_have_landed() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()

        def unanswered(version: str, tags: Mapping[str, str]) -> BaseException | None:
            if tags == SERVED.tags:  # its thread goes on, and may still write it
                return RegistryUnavailable("the registry at http://mlflow:5000 did not answer in time")
            return None

        registry.refuse = unanswered
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            await tags.submit(OWNER, ENDPOINT, "m", [ENDED], lambda: None)
            clock.now += LANDING_SECONDS - 1.0
            await settle()
            assert registry.writes == [], "the older value may still land: the newer one waits"
            clock.now += 1.0
            await settle()
            assert registry.writes == [("2", dict(ENDED.tags))]

    run(scenario)


def test_two_resources_planning_two_values_of_one_tag_take_no_turns() -> None:
    """Two ModelDeployments canary one version: its outcome tags are theirs both; the last planned
    value is written, once, and neither's passes plan theirs again."""

    async def scenario() -> None:
        registry, clock, woken = Registry(), Clock(), []
        other = ResourceRef(namespace="ml", name="other", uid="uid-2")
        key = "aliasroll.io/canary.deployment"
        mine, theirs = TagVersion("3", {key: "ml/sentiment"}), TagVersion("3", {key: "ml/other"})
        async with writing(registry, clock) as tags:
            tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [mine], lambda: woken.append("mine"))
            await tags.submit(other, ENDPOINT, "m", [theirs], lambda: woken.append("theirs"))
            clock.now += 10.0
            await settle()
            assert registry.writes == [("3", {key: "ml/other"})]
            assert sorted(woken) == ["mine", "theirs"]
            for _ in range(3):
                assert (
                    await tags.submit(OWNER, ENDPOINT, "m", [mine], lambda: woken.append("mine"))
                    == TagsState()
                )
                assert await tags.submit(other, ENDPOINT, "m", [theirs], lambda: None) == TagsState()
                await settle()
            assert len(registry.writes) == 1

    run(scenario)


def test_new_credentials_are_tried_at_once() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        readers = Endpoint("http://mlflow:5000", Credentials(token="reader"))
        editors = Endpoint("http://mlflow:5000", Credentials(token="editor"))
        refusal = RegistryAuthFailed("the registry refused the credentials (HTTP 403)")
        seen: list[Endpoint] = []

        class ByCredentials(Registry):
            async def set_version_tags(
                self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
            ) -> None:
                seen.append(endpoint)
                self.refusal = refusal if endpoint == readers else None
                await super().set_version_tags(endpoint, model, version, tags)

        registry = ByCredentials()
        async with writing(registry, clock, max_delay=0.0) as tags:
            state = await tags.submit(OWNER, readers, "m", [SERVED], lambda: None)
            await settle()
            assert (await tags.submit(OWNER, readers, "m", [SERVED], lambda: None)).problems
            # The Secret is fixed: its watch wakes the resource, whose pass has the new credentials.
            state = await tags.submit(OWNER, editors, "m", [SERVED], lambda: None)
            await settle()
            assert registry.writes == [("2", dict(SERVED.tags))], "not after the backoff: now"
            assert seen == [readers, editors]
            assert await tags.submit(OWNER, editors, "m", [SERVED], lambda: None) == TagsState()
            assert state.pending

    run(scenario)


def test_a_registrys_queue_is_bounded_and_says_what_it_turns_away(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        plans = [TagVersion(str(n), {SPAN: f"2026-12-06T1{n}:00:00Z to now (serving)"}) for n in range(5)]
        dropped = sample("aliasroll_version_tags_dropped_total", reason="queue_full")
        async with writing(registry, clock, max_queued=3) as tags:
            tags.progressed()  # a burst: the tags wait
            state = await tags.submit(OWNER, ENDPOINT, "m", plans, lambda: None)
            assert state.pending
            assert tags.queued == 3
            assert sample("aliasroll_version_tags_dropped_total", reason="queue_full") == dropped + 2
            assert "the most a registry holds" in caplog.text
            clock.now += 10.0
            await settle()
            assert len(registry.writes) == 3
            await tags.submit(OWNER, ENDPOINT, "m", plans, lambda: None)  # its next pass
            await settle()
            assert len(registry.writes) == 5

    with caplog.at_level(logging.WARNING, logger="aliasroll.controller.tag_writer"):
        run(scenario)


def test_a_gone_resources_outcome_and_span_ends_are_still_written() -> None:
    """No pass will plan them again; an open span ("to now (serving)") is not written: for a
    resource that is gone it would say "serving" for good."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        opened = TagVersion(
            "4", {SPAN.replace("100000Z", "120000Z"): "2026-12-06T12:00:00Z to now (serving)"}
        )
        async with writing(registry, clock) as tags:
            tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [ENDED, OUTCOME, opened], lambda: None)
            tags.forget(OWNER.uid)  # deleted
            clock.now += 10.0
            await settle()
            written = {(version, key) for version, tags_ in registry.writes for key in tags_}
            assert written == {("2", SPAN), *{("3", key) for key in OUTCOME.tags}}
            assert tags.queued == 0

    run(scenario)


def test_a_failover_drops_the_old_leaders_records_and_the_new_leader_plans_them_from_status() -> None:
    """What the old leader accepted and did not write is planned again by the new leader from
    status (every span of status.history, the ended run in status.lastCanary). Lost is only what
    left status before the new leader's first pass (an outcome once @canary moved on, a span's end
    once it left the bounded history)."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        history = [
            {
                "track": "production",
                "version": "1",
                "from": "2026-12-06T10:00:00Z",
                "to": "2026-12-06T11:00:00Z",
            },
            {"track": "production", "version": "2", "from": "2026-12-06T11:00:00Z"},
        ]
        plan = served_tags(owner=OWNER, spec=spec(), history=history)
        planned = [write for write in plan if isinstance(write, TagVersion)]
        registry.refusal = asyncio.CancelledError("not leading: no write")
        async with writing(registry, clock, max_delay=0.0) as old:
            await old.submit(OWNER, ENDPOINT, "sentiment", planned, lambda: None)
            await settle()
            old.forget(OWNER.uid)  # stepped down: what the passes remembered goes
            clock.now += 10.0
            await settle()
            assert registry.writes == []
            assert old.queued == 0, "the fence refused the span's end: given up"
        registry.refusal = None
        async with writing(registry, clock, max_delay=0.0) as new:
            await new.submit(OWNER, ENDPOINT, "sentiment", planned, lambda: None)
            await settle()
        landed = {(version, key) for version, key in registry.landed}
        assert landed == {(write.version, key) for write in planned for key in write.tags}

    run(scenario)


def test_stepping_down_drops_every_record_at_once() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        async with writing(registry, clock) as tags:
            tags.progressed()
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED, OUTCOME], lambda: None)
            tags.stepped_down()
            assert tags.queued == 0
            clock.now += 10.0
            await settle()
            assert registry.writes == []
            assert await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None) == TagsState(pending=True)

    run(scenario)


def test_writes_are_counted_by_outcome() -> None:
    async def scenario() -> None:
        registry, clock = Registry(), Clock()
        written = sample("aliasroll_registry_writes_total", kind="version_tag", outcome="written")
        refused = sample("aliasroll_registry_writes_total", kind="version_tag", outcome="RegistryAuthFailed")
        wakes = sample("aliasroll_record_wakes_total", reason="refused")
        registry.refuse = read_only
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [SERVED], lambda: None)
            await settle()
            registry.refuse = None
            clock.now += RETRY_FIRST_SECONDS
            await settle()
        assert (
            sample("aliasroll_registry_writes_total", kind="version_tag", outcome="RegistryAuthFailed")
            == refused + 1
        )
        assert sample("aliasroll_registry_writes_total", kind="version_tag", outcome="written") == written + 1
        assert sample("aliasroll_record_wakes_total", reason="refused") == wakes + 1

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
                version = TagVersion(str(n), dict(SERVED.tags))
                await tags.submit(owner, Endpoint("http://hangs:5000"), "m", [version], lambda: None)
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
            assert registry.writes == []
            registry.refusal = None
            other = ResourceRef(namespace="ml", name="other", uid="uid-2")
            await tags.submit(other, ENDPOINT, "m", [TagVersion("3", dict(SERVED.tags))], lambda: None)
            await settle()
            assert len(registry.writes) == 1, "the writer survived the fence"
            # Still leading (the fence flickered): its resource was not forgotten, its tag waited.
            clock.now += RETRY_FIRST_SECONDS
            await settle()
            assert len(registry.writes) == 2

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


def test_writes_held_back_by_an_outage_go_once_a_pass_reads_the_registry_again() -> None:
    """An outage's backoff can have grown to minutes; once a pass gets an answer from the registry
    (registry_answered), those writes go at once. A refusal (read-only credentials) keeps its backoff."""

    async def scenario() -> None:
        registry, clock = Registry(), Clock()

        def down(version: str, tags: Mapping[str, str]) -> BaseException:
            return RegistryUnavailable(
                "the registry at http://mlflow:5000 did not answer: connection refused"
            )

        registry.refuse = down
        async with writing(registry, clock, max_delay=0.0) as tags:
            await tags.submit(OWNER, ENDPOINT, "m", [OUTCOME], lambda: None)
            await settle()
            for _ in range(60):  # five minutes down: the backoff grows past a minute
                clock.now += 5.0
                await settle()
            registry.refuse = None
            clock.now += 1.0
            await settle()
            assert registry.writes == [], "still waiting out its backoff"
            tags.registry_answered(ENDPOINT)
            await settle()
            assert {key: value for _, written in registry.writes for key, value in written.items()} == dict(
                OUTCOME.tags
            )

            # Refused, not unreachable: an answer of the registry hurries nothing.
            registry.refuse = read_only
            await tags.submit(OWNER, ENDPOINT, "m", [ENDED], lambda: None)
            await settle()
            attempts = len(registry.attempts)
            registry.refuse = None
            tags.registry_answered(ENDPOINT)
            await settle()
            assert len(registry.attempts) == attempts

    run(scenario)
