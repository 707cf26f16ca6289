"""A scripted MLflow registry for the RegistryPoller (ScriptedRegistry, HeldPoller that holds reads open),
the subscriber it wakes (Follower), and waits for the event loop (settle, until). Shared by the poller's
tests in registry/ and the webhooks' in operator/."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, cast

from aliasroll.backoff import Backoff
from aliasroll.errors import ModelNotFound, RegistryError, RegistryUnavailable
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
        self.down = False  # every call fails, as when the registry is unreachable
        self.release = threading.Event()
        self.sweep_gate = threading.Event()  # a sweep answers once this is set (a large registry)
        self.sweep_gate.set()
        self.sweep_error: RegistryError | None = None  # what a sweep raises once let through
        self.lock = threading.Lock()

    def _block_if_silent(self, endpoint: Endpoint) -> None:
        if endpoint == SILENT:
            self.release.wait(timeout=30)
            raise RegistryUnavailable("silent registry released")

    def model_aliases(self, endpoint: Endpoint, model: str) -> dict[str, str]:
        self._block_if_silent(endpoint)
        if self.down:
            raise RegistryUnavailable("the registry is down")
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
        if self.down:
            raise RegistryUnavailable("the registry is down")
        with self.lock:
            self.sweeps += 1
            hidden, self.hide_in_next_sweep = self.hide_in_next_sweep, {}
        self.sweep_gate.wait(timeout=30)
        if self.sweep_error is not None:
            raise self.sweep_error
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

    def change_alias(
        self, endpoint: Endpoint, model: str, alias: str, expect: str, to: str | None
    ) -> dict[str, str]:
        """As RegistryClient.change_alias: moves `alias` only while it names `expect`; returns the
        aliases as read before."""
        with self.lock:
            found = dict(self.aliases[model])
            if found.get(alias) == expect:
                if to is None:
                    self.aliases[model].pop(alias, None)
                else:
                    self.aliases[model][alias] = to
        return found

    def set_version_tags(self, endpoint: Endpoint, model: str, version: str, tags: dict[str, str]) -> None:
        pass


class HeldCall:
    def __init__(self, call: str, args: tuple[object, ...], answer: object) -> None:
        self.call, self.args, self.answer = call, args, answer
        self.released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def model(self) -> str | None:
        """The model a direct read asks about (None for a sweep)."""
        return cast(str, self.args[1]) if self.call == "model_aliases" else None

    def answers(self) -> None:
        if not self.released.done():
            self.released.set_result(None)

    def fails(self, error: RegistryError) -> None:
        if not self.released.done():
            self.released.set_exception(error)


class HeldPoller(RegistryPoller):
    """A poller whose registry calls read the registry when they start and hand the answer back
    only when the test says so (HeldCall.answers or .fails): a read in flight, held open as long as
    the test needs, on the event loop's own thread, so every interleaving is the test's to choose."""

    def __init__(self, client: object, **kwargs: Any) -> None:
        kwargs.setdefault("backoff", Backoff(base=0.01, cap=0.01))  # a failed read is due again at once
        super().__init__(cast(RegistryClient, client), **kwargs)
        self.held: list[HeldCall] = []

    async def _run(self, endpoint: Endpoint, fn: Callable[..., Any], *args: object) -> Any:
        try:
            answer: object = fn(*args)  # the registry is read when the call starts...
        except RegistryError as error:
            answer = error
        call = HeldCall(fn.__name__, args, answer)
        self.held.append(call)
        try:
            await call.released  # ...and the answer travels back when the test says so
        finally:
            self.held.remove(call)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def reads(self, *models: str) -> list[HeldCall]:
        return [call for call in self.held if call.model in models]

    def sweeps(self) -> list[HeldCall]:
        return [call for call in self.held if call.call == "all_model_aliases"]


async def settle() -> None:
    """Lets the poller run until it waits for the registry or for time (nothing here sleeps)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def until(check: Callable[[], Any], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


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
