"""Adaptive micro-batching: requests that arrive while the model is busy are scored together.

There is no waiting window: an idle server scores a request at once (a batch of one); under load,
whatever queued up during the previous predict call goes into the next one, up to max_batch_rows.
Only requests of the same shape (same format, same columns, no params) are merged, and MLflow's own
`spark_udf` already relies on what this needs: that a pyfunc's predictions for rows do not depend
on which rows share the call. A batch whose output is not one prediction per row, or that fails,
is scored again request by request, so a bad request only ever fails itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aliasroll.serving.model import BatchOutcome, ServedModel
from aliasroll.serving.protocol import ParsedRequest, RequestError


@dataclass
class _Pending:
    request: ParsedRequest
    answer: asyncio.Future[bytes] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    def __init__(
        self,
        model: ServedModel,
        *,
        enabled: bool,
        max_batch_rows: int,
        threads: int,
        on_batch: Callable[[int, bool], None] = lambda size, batched: None,
    ) -> None:
        self._model = model
        self._enabled = enabled
        self._max_rows = max_batch_rows
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        self._slots = asyncio.Semaphore(threads)
        self._queue: deque[_Pending] = deque()
        self._work = asyncio.Event()
        self._on_batch = on_batch
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def score(self, request: ParsedRequest) -> bytes:
        pending = _Pending(request)
        self._queue.append(pending)
        self._work.set()
        return await pending.answer

    async def close(self) -> None:
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            self._work.clear()
            while self._queue:
                await self._slots.acquire()  # wait for a free predict thread; meanwhile the queue grows
                group = self._take_group()
                future = loop.run_in_executor(
                    self._executor, self._model.answer_group, [p.request for p in group]
                )
                future.add_done_callback(functools.partial(self._deliver, group))

    def _take_group(self) -> list[_Pending]:
        """The oldest request, and every queued request that can share its batch."""
        first = self._queue.popleft()
        key = first.request.batch_key
        if not self._enabled or key is None:
            return [first]
        group, rows, kept = [first], first.request.rows or 0, deque[_Pending]()
        while self._queue:
            candidate = self._queue.popleft()
            count = candidate.request.rows or 0
            if candidate.request.batch_key == key and rows + count <= self._max_rows:
                group.append(candidate)
                rows += count
            else:
                kept.append(candidate)
        self._queue.extendleft(reversed(kept))
        return group

    def _deliver(self, group: list[_Pending], done: asyncio.Future[BatchOutcome]) -> None:
        self._slots.release()
        if done.cancelled():
            for pending in group:
                pending.answer.cancel()
            return
        error = done.exception()
        if error is not None:
            for pending in group:
                if not pending.answer.done():
                    pending.answer.set_exception(error)
            return
        outcome = done.result()
        self._on_batch(len(group), outcome.batched)
        for pending, answer in zip(group, outcome.answers, strict=True):
            if pending.answer.done():
                continue  # the client went away or timed out
            if isinstance(answer, RequestError):
                pending.answer.set_exception(answer)
            else:
                pending.answer.set_result(answer)
