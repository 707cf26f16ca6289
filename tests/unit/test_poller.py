"""The poller's scheduling, with a scripted registry client (the client itself is tested against a real
MLflow server in tests/integration): sweeps that miss an alias, registries that never answer, a loop
that crashes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from aliasroll.errors import ModelNotFound, RegistryUnavailable
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller
from aliasroll.registry.types import Endpoint, VersionInfo

REGISTRY = Endpoint("http://registry:5000")
SILENT = Endpoint("http://silent:5000")


class ScriptedRegistry:
    """Answers from `aliases`; `hide_in_next_sweep` drops aliases from one sweep's answer; calls to the
    SILENT endpoint block until released (a registry that accepts connections and never answers)."""

    def __init__(self, aliases: dict[str, dict[str, str]]) -> None:
        self.aliases = aliases
        self.hide_in_next_sweep: dict[str, str] = {}  # {model: alias left out}
        self.sweeps = 0
        self.direct_reads: list[str] = []
        self.fail_next: BaseException | None = None
        self.release = threading.Event()
        self.lock = threading.Lock()

    def _block_if_silent(self, endpoint: Endpoint) -> None:
        if endpoint == SILENT:
            self.release.wait(timeout=30)
            raise RegistryUnavailable("silent registry released")

    def model_aliases(self, endpoint: Endpoint, model: str) -> dict[str, str]:
        self._block_if_silent(endpoint)
        with self.lock:
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                raise error
            self.direct_reads.append(model)
        if model not in self.aliases:
            raise ModelNotFound(f"no registered model {model!r}")
        return dict(self.aliases[model])

    def all_model_aliases(self, endpoint: Endpoint) -> dict[str, dict[str, str]]:
        self._block_if_silent(endpoint)
        with self.lock:
            self.sweeps += 1
            hidden, self.hide_in_next_sweep = self.hide_in_next_sweep, {}
        answer = {model: dict(aliases) for model, aliases in self.aliases.items()}
        for model, alias in hidden.items():
            answer[model].pop(alias, None)
        return answer

    def version(self, endpoint: Endpoint, model: str, version: str) -> VersionInfo | None:
        self._block_if_silent(endpoint)
        return VersionInfo(model=model, version=version, status="READY", run_id=None, source=None)

    def set_alias(self, endpoint: Endpoint, model: str, alias: str, version: str) -> None:
        with self.lock:
            self.aliases[model][alias] = version

    def set_version_tags(self, endpoint: Endpoint, model: str, version: str, tags: dict[str, str]) -> None:
        pass


async def until(check: Callable[[], Any], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


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


class Follower:
    def __init__(self, poller: RegistryPoller, endpoint: Endpoint, model: str, interval: float) -> None:
        self.poller, self.endpoint, self.model, self.interval = poller, endpoint, model, interval
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    async def snapshot(self) -> Any:
        return await self.poller.subscribe(
            subscriber=f"{self.endpoint}/{self.model}",
            endpoint=self.endpoint,
            model=self.model,
            interval=self.interval,
            wake=self.wake,
        )


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
