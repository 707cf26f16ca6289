"""Adaptive micro-batching: requests that arrive while the model is busy are scored together.

There is no waiting window: an idle server scores a request at once (a batch of one); under load,
whatever queued up during the previous predict call goes into the next one, up to max_batch_rows.
Only requests of the same shape (same format, same columns, no params) are taken together, and
the model scores them in as few predict calls as keep each request's parsed input what it is alone
(sharing.py). MLflow's own `spark_udf` already relies on what a shared call needs: that a pyfunc's
predictions for rows do not depend on which rows share the call. A batch whose output is not one
prediction per row, or that fails, is scored again request by request, so a bad request only ever
fails itself.

Each request costs the two hand-offs `mlflow models serve` pays too (loop -> predict thread -> loop)
and wakes no other thread: on a busy 2-core node every extra wake-up is one more wait for a CPU or
the GIL, and that showed as a p99 at one client worse than the reference's (11.4 vs 6.7 ms):
- each predict thread waits on an inbox of its own. With ThreadPoolExecutor's one shared queue, a
  request went to whichever idle thread had waited longest (so sequential requests alternated
  threads), and CPython's SimpleQueue woke the other idle threads too, which then took the GIL from
  the thread predicting only to go back to sleep (measured at one client: 6-12 voluntary context
  switches a request before, 3-4 now);
- the most recently idle thread is reused (its stack and caches are warm);
- a thread hands its answers back with one `call_soon_threadsafe`, not through an asyncio future
  chained to a concurrent one, and no batcher task has to be woken in between: the dispatch is a
  callback that runs after the tasks ready in the same loop pass (so a burst read together shares
  one predict call; a lone request waits for nothing else).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aliasroll.serving.model import BatchOutcome, ServedModel
from aliasroll.serving.protocol import ParsedRequest, RequestError


@dataclass
class _Pending:
    request: ParsedRequest
    answer: asyncio.Future[bytes] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class _Worker:
    """One predict thread and its own inbox (None stops it)."""

    def __init__(self, name: str, run: Callable[[_Worker], None]) -> None:
        self.inbox: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        # A daemon, so that nothing but Batcher.close() waits for it: if the loop ever stops
        # without closing the batcher, idle threads must not keep the process alive.
        self.thread = threading.Thread(target=run, args=(self,), name=name, daemon=True)


class Batcher:
    def __init__(
        self,
        model: ServedModel,
        *,
        enabled: bool,
        max_batch_rows: int,
        threads: int,
        on_batch: Callable[[int], None] = lambda size: None,  # requests per predict call
    ) -> None:
        self._model = model
        self._enabled = enabled
        self._max_rows = max_batch_rows
        self._loop = asyncio.get_running_loop()
        self._threads = threads
        self._queue: deque[_Pending] = deque()
        self._on_batch = on_batch
        self._dispatch_scheduled = False
        self._closed = False
        self._all_idle = asyncio.Event()  # set when the last call in flight is delivered
        self._workers = [_Worker(f"predict-{index}", self._work) for index in range(threads)]
        # Idle workers, the most recently idle last; only the loop's thread touches this list.
        self._idle = list(reversed(self._workers))
        for worker in self._workers:
            worker.thread.start()

    @property
    def idle(self) -> bool:
        """No predict call in flight and nothing queued."""
        return len(self._idle) == self._threads and not self._queue

    async def score(self, request: ParsedRequest) -> bytes:
        if self._closed:
            raise RequestError(
                503, "The server is stopping; retry the request.", error_code="TEMPORARILY_UNAVAILABLE"
            )
        pending = _Pending(request)
        self._queue.append(pending)
        if self._idle and not self._dispatch_scheduled:
            # Dispatched by a callback after the tasks already ready in this loop iteration, not
            # here: requests read together (a burst of clients) then share one predict call. On an
            # idle server that costs a lone request one pass of the loop (no thread, no wake-up).
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)
        # With every thread busy the queue grows, and goes out as one batch when one frees.
        return await pending.answer

    async def close(self) -> None:
        """Cancels what is queued, waits for the predict calls in flight, and stops the threads.

        The wait keeps the stop contract (server.py): a call that outlives the drain holds the
        process until the watchdog exits 1 and says so; a daemon thread alone would let it exit 0.
        """
        self._closed = True
        while self._queue:
            self._queue.popleft().answer.cancel()
        while len(self._idle) < self._threads:
            self._all_idle.clear()
            await self._all_idle.wait()
        for worker in self._workers:
            worker.inbox.put(None)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._queue and self._idle and not self._closed:
            self._idle.pop().inbox.put(self._take_group())

    def _work(self, worker: _Worker) -> None:
        """A predict thread's loop: one group at a time, its outcome handed straight to the loop."""
        while (group := worker.inbox.get()) is not None:
            outcome: BatchOutcome | Exception
            try:
                outcome = self._model.answer_group([pending.request for pending in group])
            except Exception as error:  # delivered to the requests, never lost in the thread
                outcome = error
            except BaseException:
                self._hand_back(worker, group, RuntimeError("the predict call was interrupted"))
                raise
            if not self._hand_back(worker, group, outcome):
                return

    def _hand_back(self, worker: _Worker, group: list[_Pending], outcome: BatchOutcome | Exception) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._deliver, worker, group, outcome)
        except RuntimeError:  # the loop is closed: nobody waits for an answer any more
            return False
        return True

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

    def _deliver(self, worker: _Worker, group: list[_Pending], outcome: BatchOutcome | Exception) -> None:
        self._idle.append(worker)
        if len(self._idle) == self._threads:
            self._all_idle.set()
        if self._queue and not self._dispatch_scheduled:
            # What queued while this batch was predicted goes out the same way, after what is
            # ready in this iteration (under load each predict call has a fixed cost: fewer,
            # larger batches answer more requests a second).
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)
        if not isinstance(outcome, BatchOutcome):
            for pending in group:
                if not pending.answer.done():
                    pending.answer.set_exception(outcome)
            return
        for size in outcome.calls:
            self._on_batch(size)
        for pending, answer in zip(group, outcome.answers, strict=True):
            if pending.answer.done():
                continue  # the client went away or timed out
            if isinstance(answer, RequestError):
                pending.answer.set_exception(answer)
            else:
                pending.answer.set_result(answer)
