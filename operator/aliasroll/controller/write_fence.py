"""The write fence: passes run, and write, only while this replica leads.

`Fence` runs the passes and cancels those in flight when leadership ends (the elector in
leadership.py raises and closes it, and binds it to its lease on the clock); `FencedClient` and
`FencedRegistry` check it before every write to Kubernetes and to the registries. Kopf's peering
only pauses handlers and does not fence writes; this does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from lightkube import AsyncClient

from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller
from aliasroll.registry.types import Endpoint

T = TypeVar("T")


class Fence:
    """Runs passes only while leading, and cancels those in flight when leadership ends.

    Cancelling takes effect at a pass's next await; a pass that was suspended past the renew
    deadline (a frozen process) could resume a step before the elector notices, so every write
    (FencedClient, FencedRegistry) also checks `open` itself, on the clock, right before it starts.
    """

    def __init__(self) -> None:
        self._open = False
        self._valid: Callable[[], bool] = lambda: True
        self._in_flight: set[asyncio.Task[Any]] = set()

    @property
    def open(self) -> bool:
        return self._open and self._valid()

    @property
    def raised(self) -> bool:
        """Leading, as the elector last said, whether or not the lease is still valid on the clock
        this instant: a renewal running late closes `open` for a moment without a step-down."""
        return self._open

    def bind(self, valid: Callable[[], bool]) -> None:
        """Also closed whenever `valid()` is false (the elector's lease, on the clock)."""
        self._valid = valid

    def check(self) -> None:
        """Before a write: past the fence, the pass ends here as if cancelled (not a failure)."""
        if not self.open:
            raise asyncio.CancelledError("not leading: no write")

    def raise_(self) -> None:
        self._open = True

    def close(self) -> int:
        """Stops every pass in flight at its next await; returns how many were running."""
        self._open = False
        for task in self._in_flight:
            task.cancel()
        return len(self._in_flight)

    async def run(self, work: Coroutine[Any, Any, T]) -> T | None:
        """`work`'s result, or None when it did not run or was cut off by the fence closing."""
        if not self.open:
            work.close()
            return None
        task = asyncio.ensure_future(work)
        self._in_flight.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                return None  # the fence closed; the caller itself was not cancelled
            raise
        finally:
            self._in_flight.discard(task)


class FencedClient(AsyncClient):
    """The passes' Kubernetes client: every write first checks the fence."""

    def __init__(self, *, fence: Fence, field_manager: str) -> None:
        super().__init__(field_manager=field_manager)
        self._fence = fence

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().create(*args, **kwargs)

    async def replace(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().replace(*args, **kwargs)

    async def patch(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().patch(*args, **kwargs)

    async def apply(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().apply(*args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().delete(*args, **kwargs)

    async def deletecollection(self, *args: Any, **kwargs: Any) -> Any:
        self._fence.check()
        return await super().deletecollection(*args, **kwargs)


class FencedRegistry(RegistryPoller):
    """The registry poller, whose writes (alias moves, version tags) first check the fence."""

    def __init__(self, client: RegistryClient, *, fence: Fence, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._fence = fence

    async def set_alias(self, endpoint: Endpoint, model: str, alias: str, version: str) -> None:
        self._fence.check()
        await super().set_alias(endpoint, model, alias, version)

    async def delete_alias(self, endpoint: Endpoint, model: str, alias: str) -> None:
        self._fence.check()
        await super().delete_alias(endpoint, model, alias)

    async def change_alias(
        self, endpoint: Endpoint, model: str, alias: str, *, expect: str, to: str | None
    ) -> dict[str, str]:
        self._fence.check()
        return await super().change_alias(endpoint, model, alias, expect=expect, to=to)

    async def set_version_tags(
        self, endpoint: Endpoint, model: str, version: str, tags: Mapping[str, str]
    ) -> None:
        self._fence.check()
        await super().set_version_tags(endpoint, model, version, tags)
