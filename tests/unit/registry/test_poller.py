"""The poller's scheduling, with a scripted registry client (the client itself is tested against a real
MLflow server in tests/integration): sweeps that miss an alias, registries that never answer, a loop
that crashes; and, with reads held open (HeldPoller), what happens while a read is under way: a push,
a follower leaving, an outage, a sweep that does not answer in time. The scripted registry and the held
poller are in tests/unit/scripted_registry.py; test_poller_model.py, beside this, drives random
interleavings of all of these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import cast

import pytest
from scripted_registry import (
    REGISTRY,
    SILENT,
    Follower,
    HeldPoller,
    ScriptedRegistry,
    settle,
    until,
)

from aliasroll.backoff import Backoff
from aliasroll.errors import RegistryUnavailable
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller


@pytest.fixture
def registry() -> Iterator[ScriptedRegistry]:
    scripted = ScriptedRegistry(
        {
            "m1": {"production": "1", "canary": "2"},
            "m2": {"production": "4"},
            "m3": {"production": "7"},
        }
    )
    yield scripted
    scripted.release.set()  # threads blocked on the silent registry end now
    scripted.sweep_gate.set()


async def test_an_alias_one_sweep_misses_is_confirmed_by_a_direct_read_and_kept(
    registry: ScriptedRegistry,
) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), sweep_threshold=2, batch_window=0.05)
    followers = [Follower(poller, REGISTRY, model, interval=0.1) for model in ("m1", "m2", "m3")]
    try:
        first = await asyncio.gather(*(f.snapshot() for f in followers))
        assert first[0].aliases == {"production": "1", "canary": "2"}
        assert registry.direct_reads == []
        wakes_before = followers[0].wakes

        with registry.lock:  # page boundaries shifted: @canary not seen
            registry.hide_in_next_sweep = {"m1": "canary"}
            sweeps = registry.sweeps
        await until(lambda: registry.sweeps >= sweeps + 2)  # the flaky sweep, then one more, recorded

        assert registry.direct_reads == ["m1"], "only the model that lost an alias is read again"
        assert followers[0].wakes == wakes_before, "nothing changed, so nobody was woken"
        assert (await followers[0].snapshot()).aliases == {"production": "1", "canary": "2"}
    finally:
        await poller.close()


async def test_an_alias_really_deleted_is_published_after_the_direct_read(registry: ScriptedRegistry) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), sweep_threshold=2, batch_window=0.05)
    followers = [Follower(poller, REGISTRY, model, interval=0.1) for model in ("m1", "m2", "m3")]
    try:
        await asyncio.gather(*(f.snapshot() for f in followers))
        wakes_before = followers[0].wakes
        del registry.aliases["m1"]["canary"]  # the user ended the canary
        await until(lambda: followers[0].wakes > wakes_before)
        assert (await followers[0].snapshot()).aliases == {"production": "1"}
        assert registry.direct_reads == ["m1"]
    finally:
        await poller.close()


async def test_a_silent_registry_holds_only_its_own_threads_and_its_followers_get_an_error(
    registry: ScriptedRegistry,
) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), concurrency_per_registry=2, answer_timeout=0.3)
    try:
        # More models on the silent registry than it has threads, asked for first.
        silent = [Follower(poller, SILENT, f"s{index}", interval=30) for index in range(12)]
        silent_answers = asyncio.gather(*(f.snapshot() for f in silent))
        await asyncio.sleep(0.05)

        answer = await asyncio.wait_for(Follower(poller, REGISTRY, "m2", interval=30).snapshot(), timeout=5)
        assert answer.aliases == {"production": "4"}

        for snapshot in await asyncio.wait_for(silent_answers, timeout=5):
            assert snapshot.aliases is None
            assert isinstance(snapshot.error, RegistryUnavailable)
            assert "http://silent:5000 did not answer in time" in snapshot.error.message
        with pytest.raises(RegistryUnavailable, match="did not answer in time"):
            await poller.version(SILENT, "s0", "1", ttl=30)
    finally:
        registry.release.set()
        await poller.close()


async def test_the_first_answer_after_a_timeout_wakes_the_follower(registry: ScriptedRegistry) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), answer_timeout=0.1)
    follower = Follower(poller, SILENT, "m2", interval=30)
    try:
        assert (await follower.snapshot()).error is not None
        registry.release.set()  # the registry finally answers (with an error, here)
        await until(lambda: follower.wakes == 1)
        snapshot = await follower.snapshot()
        assert isinstance(snapshot.error, RegistryUnavailable)
        assert "released" in snapshot.error.message
    finally:
        await poller.close()


async def test_a_crashed_poll_loop_is_logged_and_restarted(
    registry: ScriptedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.fail_next = RuntimeError("a bug the client does not map")
    poller = RegistryPoller(cast(RegistryClient, registry), answer_timeout=5)
    try:
        async with asyncio.timeout(5):
            snapshot = await Follower(poller, REGISTRY, "m3", interval=30).snapshot()
        assert snapshot.aliases == {"production": "7"}
        crashes = [r for r in caplog.records if r.levelno == logging.ERROR and "crashed" in r.getMessage()]
        assert len(crashes) == 1
        assert crashes[0].exc_info is not None, "the traceback is logged"
    finally:
        await poller.close()


async def test_refresh_reads_a_followed_model_at_once_and_tells_an_unknown_one(
    registry: ScriptedRegistry,
) -> None:
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    follower = Follower(poller, REGISTRY, "m2", interval=3600.0)
    try:
        await follower.snapshot()
        wakes = follower.wakes
        assert poller.refresh("nobody") == 0
        assert poller.refresh("m2", SILENT) == 0, "only the named registry"
        with registry.lock:
            registry.aliases["m2"] = {"production": "5"}
        assert poller.refresh("m2", moved_at=123.0) == 1
        # The follower is woken once the answer is recorded (the read itself ends a moment before).
        await until(lambda: follower.wakes > wakes)
        assert (await follower.snapshot()).aliases == {"production": "5"}
        assert poller.take_change(f"{REGISTRY}/m2") == 123.0, "the registry's time of the move"
        assert poller.take_change(f"{REGISTRY}/m2") is None, "once per change"
    finally:
        await poller.close()


async def test_an_alias_write_reads_the_model_again_and_a_tag_write_does_not(
    registry: ScriptedRegistry,
) -> None:
    """Every resource tags the version it starts serving: a thousand of them must not cost a
    thousand reads of aliases that a tag cannot change."""
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    follower = Follower(poller, REGISTRY, "m1", interval=3600.0)
    try:
        await follower.snapshot()
        reads = len(registry.direct_reads)
        for n in range(5):
            await poller.set_version_tags(REGISTRY, "m1", "1", {"served": str(n)})
        await asyncio.sleep(0.05)
        assert len(registry.direct_reads) == reads, "no read after a tag write"

        wakes = follower.wakes
        await poller.set_alias(REGISTRY, "m1", "production", "2")
        await until(lambda: follower.wakes > wakes)
        assert (await follower.snapshot()).aliases["production"] == "2"
        assert registry.direct_reads[reads:] == ["m1"], "one read after the alias write"
    finally:
        await poller.close()


async def test_a_human_moving_an_alias_straight_back_after_the_operators_write_wakes_the_resource(
    registry: ScriptedRegistry,
) -> None:
    """The operator promotes (@production 1 -> 2) and a human moves it straight back to 1 before the
    poller's next read: that read answers what the poller knew before the write. The write itself is
    taken as the answer at once, so the read that finds 1 again is a change, and the resource is
    woken to call its promotion off (it would otherwise wait for its at-rest timer, minutes)."""
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    follower = Follower(poller, REGISTRY, "m1", interval=3600.0)
    try:
        await follower.snapshot()
        wakes = follower.wakes
        found = await poller.change_alias(REGISTRY, "m1", "production", expect="1", to="2")
        assert found["production"] == "1"
        assert follower.wakes == wakes + 1, "the write wakes its resource"
        assert (await follower.snapshot()).aliases["production"] == "2"
        with registry.lock:
            registry.aliases["m1"]["production"] = "1"  # a human: "not yet", before the next read
        await until(lambda: follower.wakes == wakes + 2)
        assert (await follower.snapshot()).aliases["production"] == "1"
    finally:
        await poller.close()


async def test_a_read_that_began_before_the_operators_write_is_not_taken_over_it(
    registry: ScriptedRegistry,
) -> None:
    """A poll under way when the operator writes saw the registry before the write: its answer would
    undo the write in the poller's view (and a run would take its own promotion for a human's move
    back), so it is dropped and the model read again."""
    poller = HeldPoller(registry, batch_window=0.0)
    follower = Follower(poller, REGISTRY, "m1", interval=3600.0)
    try:
        first = asyncio.ensure_future(follower.snapshot())
        await settle()
        for call in poller.reads("m1"):
            call.answers()
        await first
        poller.refresh("m1")  # a poll starts and reads @production 1...
        await settle()
        (stale,) = poller.reads("m1")
        write = asyncio.ensure_future(poller.change_alias(REGISTRY, "m1", "production", expect="1", to="2"))
        await settle()
        for call in list(poller.held):
            if call.call == "change_alias":
                call.answers()  # ...the write lands...
        await write
        stale.answers()  # ...and the poll's answer, from before it, arrives
        await settle()
        assert (await follower.snapshot()).aliases["production"] == "2", "the stale answer is dropped"
        (again,) = poller.reads("m1")
        again.answers()
        await settle()
        assert (await follower.snapshot()).aliases["production"] == "2"
    finally:
        await poller.close()


async def test_models_followed_at_different_moments_fall_due_together_and_one_sweep_reads_them(
    registry: ScriptedRegistry,
) -> None:
    """Each model is read at once when first followed, then on the grid its registry and interval
    share: one sweep a poll, however the subscriptions were spread."""
    poller = RegistryPoller(cast(RegistryClient, registry), sweep_threshold=2, batch_window=0.0)
    followers = [Follower(poller, REGISTRY, model, interval=0.3) for model in ("m1", "m2", "m3")]
    try:
        for follower in followers:
            await follower.snapshot()
            await asyncio.sleep(0.07)
        assert sorted(registry.direct_reads) == ["m1", "m2", "m3"], "each read once when first followed"
        await until(lambda: registry.sweeps >= 3, limit=3.0)
        assert len(registry.direct_reads) == 3, "after that, only sweeps"
    finally:
        await poller.close()


# While a read is under way.

BY_SWEEP = pytest.mark.parametrize("sweep", [False, True], ids=["direct reads", "one sweep"])
MODELS = ("m1", "m2", "m3")


async def follow(poller: HeldPoller, models: tuple[str, ...] = MODELS) -> list[Follower]:
    """A follower for each model, answered (one held read each, or one held sweep, let through)."""
    followers = [Follower(poller, REGISTRY, model, interval=3600.0) for model in models]
    first = asyncio.gather(*(follower.snapshot() for follower in followers))
    await settle()
    for call in list(poller.held):
        call.answers()
    await first
    return followers


def read_all(poller: RegistryPoller, models: tuple[str, ...] = MODELS) -> None:
    """A poll of every model (as the grid brings it), here brought forward."""
    for model in models:
        poller.refresh(model)


@BY_SWEEP
async def test_a_push_that_arrives_while_the_model_is_read_is_read_again(
    registry: ScriptedRegistry, sweep: bool
) -> None:
    """A refresh (a push, an alias write) received after a read of the model started causes another
    read once that read ends: the read under way may have seen the registry before the move."""
    poller = HeldPoller(registry, sweep_threshold=2 if sweep else 25, batch_window=0.0)
    try:
        followers = await follow(poller)
        wakes = followers[0].wakes
        read_all(poller)  # a poll is under way...
        await settle()
        under_way = list(poller.held)
        assert [call.call for call in under_way] == (
            ["all_model_aliases"] if sweep else ["model_aliases"] * 3
        )
        with registry.lock:
            registry.aliases["m1"]["production"] = "3"  # ...when @production moves
        assert poller.refresh("m1", moved_at=123.0) == 1  # and MLflow pushes
        for call in under_way:
            call.answers()  # what the registry said before the move
        await settle()

        assert followers[0].wakes == wakes, "nothing new in that answer"
        again = poller.reads("m1")
        assert len(again) == 1, "m1 is read once more, at once (not a pollInterval later)"
        assert poller.held == again, "and only m1"
        again[0].answers()
        await settle()
        assert followers[0].wakes == wakes + 1
        assert (await followers[0].snapshot()).aliases == {"production": "3", "canary": "2"}
        assert poller.take_change(f"{REGISTRY}/m1") == 123.0, "the pushed move's own time"
        assert poller.held == [], "then the grid again"
    finally:
        await poller.close()


@BY_SWEEP
async def test_a_follower_leaving_while_its_model_is_read_costs_no_other_answer(
    registry: ScriptedRegistry, sweep: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A follower may leave at any moment (its resource deleted during another's registry outage):
    the read under way drops only that model; every other answer of the batch is published, and
    nothing escapes the poll loop. Followed again, the model gets a read of its own."""
    poller = HeldPoller(registry, sweep_threshold=2 if sweep else 25, batch_window=0.0)
    try:
        followers = await follow(poller)
        wakes = [follower.wakes for follower in followers]
        with registry.lock:
            registry.aliases["m2"]["production"] = "5"
            registry.aliases["m3"]["production"] = "8"
        read_all(poller)
        await settle()
        assert poller.held
        poller.unsubscribe(f"{REGISTRY}/m1")  # m1's last follower leaves while it is being read
        for call in list(poller.held):
            call.answers()
        await settle()

        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert [follower.wakes - before for follower, before in zip(followers, wakes, strict=True)] == [
            0,
            1,
            1,
        ]
        assert (await followers[1].snapshot()).aliases == {"production": "5"}
        assert (await followers[2].snapshot()).aliases == {"production": "8"}
        assert poller.held == []

        back = asyncio.ensure_future(followers[0].snapshot())
        await settle()
        assert [call.model for call in poller.held] == ["m1"]
        poller.held[0].answers()
        assert (await back).aliases == {"production": "1", "canary": "2"}
    finally:
        await poller.close()


@BY_SWEEP
async def test_an_outage_wakes_followers_when_it_begins_and_when_it_ends_only(
    registry: ScriptedRegistry, sweep: bool
) -> None:
    """Followers are woken only when their answer changes: a registry that fails the same way at
    every retry costs retries, not passes."""
    # The default batch window (0.25 s) takes in a retry due 0.01 s later: one retry each turn.
    poller = HeldPoller(registry, sweep_threshold=2 if sweep else 25)
    try:
        followers = await follow(poller)
        wakes = [follower.wakes for follower in followers]
        registry.down = True
        read_all(poller)
        for _ in range(5):
            await settle()
            assert poller.held, "retried"
            for call in list(poller.held):
                call.answers()  # fails: the registry is down
        await settle()
        assert [follower.wakes - before for follower, before in zip(followers, wakes, strict=True)] == [
            1,
            1,
            1,
        ]
        snapshot = await followers[0].snapshot()
        assert snapshot.aliases is None
        assert isinstance(snapshot.error, RegistryUnavailable)

        registry.down = False
        for call in list(poller.held):
            call.fails(RegistryUnavailable("the last failure"))
        for _ in range(3):
            await settle()
            for call in list(poller.held):
                call.answers()
        await settle()
        assert [follower.wakes - before for follower, before in zip(followers, wakes, strict=True)] == [
            2,
            2,
            2,
        ]
        assert (await followers[0].snapshot()).aliases == {"production": "1", "canary": "2"}
    finally:
        await poller.close()


async def test_a_first_sweep_that_is_late_gives_way_to_direct_reads(registry: ScriptedRegistry) -> None:
    """A sweep has a deadline (half the answer timeout): past it, the followers still waiting for a
    first answer get it from a direct read while the sweep runs on, and the loop goes on (a push is
    read at once). A late sweep of one page is only a slow call: sweeps go on."""
    registry.sweep_gate.clear()  # the registry is slow to list its models
    poller = RegistryPoller(
        cast(RegistryClient, registry), sweep_threshold=2, answer_timeout=2.0, batch_window=0.0
    )
    followers = [Follower(poller, REGISTRY, model, interval=3600.0) for model in MODELS]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        answers = await asyncio.gather(*(follower.snapshot() for follower in followers))
        assert [answer.aliases for answer in answers] == [
            {"production": "1", "canary": "2"},
            {"production": "4"},
            {"production": "7"},
        ], "answers, not RegistryUnavailable"
        assert loop.time() - started < 2.0
        assert registry.sweeps == 1
        assert sorted(registry.direct_reads) == ["m1", "m2", "m3"]

        with registry.lock:
            registry.aliases["m2"]["production"] = "5"
        poller.refresh("m2")  # a push while the sweep still runs: read at once
        await until(lambda: followers[1].wakes == 2)

        registry.sweep_gate.set()  # the sweep answers, past its deadline
        await until(lambda: not poller._sweeps)
        read_all(poller)
        await until(lambda: registry.sweeps == 2)
        assert len(registry.direct_reads) == 4
        assert (await followers[1].snapshot()).aliases == {"production": "5"}
    finally:
        await poller.close()


async def test_a_registry_too_large_to_sweep_in_time_is_read_one_by_one(registry: ScriptedRegistry) -> None:
    """A late sweep of more than one page (1,000 models) turns sweeps of that registry off for an
    hour, even where its size alone would make them pay off: one would not fit in a poll."""
    models = tuple(f"m{n}" for n in range(1, 42))  # 41 models due: a sweep pays off up to 1,025 models
    registry.aliases.update({model: {"production": "1"} for model in models[3:]})
    registry.aliases.update({f"elsewhere-{n}": {} for n in range(1001 - len(registry.aliases))})
    registry.sweep_gate.clear()
    poller = RegistryPoller(
        cast(RegistryClient, registry), sweep_threshold=25, answer_timeout=1.0, batch_window=0.0
    )
    followers = [Follower(poller, REGISTRY, model, interval=3600.0) for model in models]
    try:
        answers = await asyncio.gather(*(follower.snapshot() for follower in followers))
        assert all(answer.error is None for answer in answers)
        assert (registry.sweeps, len(registry.direct_reads)) == (1, 41)
        registry.sweep_gate.set()
        await until(lambda: not poller._sweeps)
        read_all(poller, models)
        await until(lambda: len(registry.direct_reads) == 82)
        assert registry.sweeps == 1
    finally:
        await poller.close()


async def test_a_late_sweep_that_fails_keeps_its_models_and_sweeps_on(registry: ScriptedRegistry) -> None:
    """A sweep past its deadline keeps the models someone already has an answer for (a registry
    that does not answer costs one call a retry, not one per model); one that fails says nothing of
    the registry's size, so sweeps go on."""
    poller = RegistryPoller(
        cast(RegistryClient, registry),
        sweep_threshold=2,
        answer_timeout=0.6,
        batch_window=0.0,
        backoff=Backoff(base=0.05, cap=0.05, jitter=0.0),  # the models are retried together
    )
    followers = [Follower(poller, REGISTRY, model, interval=3600.0) for model in MODELS]
    try:
        await asyncio.gather(*(follower.snapshot() for follower in followers))
        assert (registry.sweeps, registry.direct_reads) == (1, [])
        registry.sweep_gate.clear()
        registry.sweep_error = RegistryUnavailable("timed out")  # after a while
        read_all(poller)
        await asyncio.sleep(0.5)  # past the deadline (0.3 s)
        assert registry.direct_reads == [], "answered models wait for the late sweep"
        registry.sweep_gate.set()
        await until(lambda: followers[0].wakes == 2)  # the error is published
        registry.sweep_error = None
        await until(lambda: followers[0].wakes == 3)  # and the sweeps that follow answer
        assert registry.sweeps >= 3
        assert registry.direct_reads == []
    finally:
        await poller.close()
