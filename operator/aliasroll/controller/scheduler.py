"""One worker per ModelDeployment, so every trigger runs the same level-based pass.

Watch events, registry changes, drift on owned objects and the poll timer only wake the worker; it
reads the latest body and runs a full pass. Passes of one resource never overlap, and wakes that
arrive during a pass coalesce into one more pass. A failed pass is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aliasroll.controller.reconciler import PassResult, Wake

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[Mapping[str, Any], Wake], Awaitable[PassResult]]


def _essence(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a pass depends on, apart from status (our own status writes must not wake us)."""
    meta = body.get("metadata") or {}
    return (body.get("spec"), meta.get("generation"), meta.get("uid"), meta.get("deletionTimestamp"))


class Scheduler:
    def __init__(
        self,
        *,
        reconcile: Reconcile,
        forget: Callable[[Key, Mapping[str, Any] | None], None],
        retry_base: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self._reconcile = reconcile
        self._forget = forget
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._bodies: dict[Key, Mapping[str, Any]] = {}
        self._wakes: dict[Key, asyncio.Event] = {}
        self._workers: dict[Key, asyncio.Task[None]] = {}

    def update(self, key: Key, body: Mapping[str, Any]) -> None:
        """A watch event for the resource: start its worker, or wake it if anything but status changed."""
        before = self._bodies.get(key)
        self._bodies[key] = body
        if key not in self._workers:
            self._wakes[key] = asyncio.Event()
            self._workers[key] = asyncio.create_task(self._work(key), name=f"reconcile {key[0]}/{key[1]}")
        elif before is None or _essence(before) != _essence(body):
            self.wake(key)

    def wake(self, key: Key) -> None:
        event = self._wakes.get(key)
        if event is not None:
            event.set()

    async def remove(self, key: Key) -> None:
        task = self._workers.pop(key, None)
        body = self._bodies.pop(key, None)
        self._wakes.pop(key, None)
        self._forget(key, body)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        for key in list(self._workers):
            await self.remove(key)

    @property
    def keys(self) -> list[Key]:
        return list(self._workers)

    async def _work(self, key: Key) -> None:
        failures = 0
        wake = self._wakes[key]
        while True:
            wake.clear()
            body = self._bodies[key]
            try:
                result = await self._reconcile(body, lambda: self.wake(key))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a pass must never kill the worker: log, back off, retry
                log.exception("%s/%s: reconcile pass failed: %s", key[0], key[1], error)
                result = PassResult(next_in=None, failed=None)
                failures += 1
            else:
                failures = failures + 1 if result.failed is not None else 0
            delay = result.next_in
            if failures:
                backoff = min(self._retry_max, self._retry_base * 2 ** (failures - 1))
                delay = backoff if delay is None else min(delay, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see RegistryPoller._loop
                    await wake.wait()
