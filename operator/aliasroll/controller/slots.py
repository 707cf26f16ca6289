"""A pass's slot: one of the few passes the scheduler runs at once (ALIASROLL_MAX_CONCURRENT_PASSES).

A pass may have to wait on an endpoint a tenant chose: a registry's first answer (up to the call's
deadline) or the versions it names. Waiting in its slot, sixteen such passes would hold every slot
and stop every other tenant's. So the pass gives its slot back for that wait (`given_back`) and takes
one again after it, behind any pass queued meanwhile. The scheduler makes each pass's slot current
(`running_in`); outside a pass (tests, tools) there is none and nothing is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar


class PassSlot:
    """One pass's hold on the scheduler's semaphore, released at most once per acquire (a pass
    cancelled while it waits to take its slot again must not release one it does not hold)."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore
        self.held = False

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._semaphore.release()


_current: ContextVar[PassSlot | None] = ContextVar("aliasroll_pass_slot", default=None)


@contextlib.contextmanager
def running_in(slot: PassSlot) -> Iterator[None]:
    token = _current.set(slot)
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.asynccontextmanager
async def given_back() -> AsyncIterator[None]:
    """Runs the block without the current pass's slot, and takes one again after it."""
    slot = _current.get()
    if slot is None or not slot.held:
        yield
        return
    slot.release()
    try:
        yield
    finally:
        await slot.acquire()
