"""Shadow traffic: production's server sends a copy of a share of its answered requests to the shadow
track, and compares the shadow's predictions with its own.

Only after its client has the answer (app.py offers the copy once the answer is sent), and never at
the client's cost: `offer` takes no time (it queues, or drops) and the copies are sent by
`ALIASROLL_SHADOW_CONCURRENCY` workers of their own, outside the requests in flight
(`ALIASROLL_MAX_IN_FLIGHT` counts none of them). What a slow, hanging or hostile shadow can cost is
bounded: `ALIASROLL_SHADOW_QUEUE` copies waiting and `ALIASROLL_SHADOW_QUEUE_BYTES` of their bodies
and answers (past either a copy is dropped, and counted `dropped`), a deadline a call
(`ALIASROLL_SHADOW_TIMEOUT_SECONDS`, then `timeout`) and a byte budget on the shadow's answer
(`ALIASROLL_SHADOW_MAX_ANSWER_BYTES`, cut while it streams in: `shadow_error`).

Which requests: those answered 200 (the pair needs production's predictions), never a request that is
itself mirrored, `ALIASROLL_SHADOW_PERCENT` of them, taken evenly (every other one at 50, every
fourth at 25), not at random: the share is exact over any run of requests. A copy carries the
request's body and content type, and `X-Aliasroll-Mirror` (`ALIASROLL_MIRROR_TOKEN`, or `1`) so the
shadow counts it apart from client traffic (shadow_metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aliasroll.serving.config import ShadowConfig
from aliasroll.serving.predictions import Unparseable, compare, predictions_of
from aliasroll.serving.shadow_client import ShadowCallError, post
from aliasroll.serving.shadow_metrics import PairMetrics

log = logging.getLogger("aliasroll.serving.mirror")

Post = Callable[..., Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True)
class Copy:
    """A mirrored request: what was asked, and what production answered."""

    body: bytes
    content_type: str
    answer: bytes

    @property
    def size(self) -> int:
        return len(self.body) + len(self.answer)


class Sampler:
    """Takes `percent` of the requests offered, evenly: each offer adds `percent` of credit, and a
    request is taken whenever the credit reaches 100."""

    # Credit in millionths of a percent: integers, so 1000 offers at 0.1 take exactly one.
    SCALE = 1_000_000

    def __init__(self, percent: float) -> None:
        self._step = round(percent * self.SCALE)
        self._credit = 0

    def take(self) -> bool:
        self._credit += self._step
        if self._credit >= 100 * self.SCALE:
            self._credit -= 100 * self.SCALE
            return True
        return False


class Mirror:
    def __init__(self, config: ShadowConfig, metrics: PairMetrics, *, mark: bytes, send: Post = post) -> None:
        self._config = config
        self._metrics = metrics
        self._mark = mark
        self._send = send
        self._sampler = Sampler(config.percent)
        self._queue: asyncio.Queue[Copy] = asyncio.Queue(config.queue)
        self._held = 0  # bytes of the copies queued or in flight
        self._pending = 0  # copies queued or in flight
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        count = self._config.concurrency
        self._workers = [loop.create_task(self._work(), name=f"mirror-{index}") for index in range(count)]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def offer(self, body: bytes, content_type: str, answer: bytes) -> None:
        """Queues a copy of an answered request, if it is in the share; never waits."""
        if not self._sampler.take():
            return
        copy = Copy(body, content_type, answer)
        if self._queue.full() or self._held + copy.size > self._config.queue_bytes:
            self._metrics.observe("dropped")
            return
        self._queue.put_nowait(copy)
        self._held += copy.size
        self._pending += 1
        self._metrics.set_queue(self._pending)

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._mirror(copy)
            except Exception:  # a bug of ours: the worker lives on, and the pair is still counted
                log.exception("mirroring a request failed unexpectedly")
                self._metrics.observe_error("protocol")
            finally:
                self._held -= copy.size
                self._pending -= 1
                self._metrics.set_queue(self._pending)

    async def _mirror(self, copy: Copy) -> None:
        try:
            status, answer = await self._send(
                self._config, copy.body, content_type=copy.content_type, mark=self._mark
            )
        except TimeoutError:
            self._metrics.observe("timeout")
            return
        except ShadowCallError as error:
            self._metrics.observe_error(error.reason)
            return
        if status != 200:
            self._metrics.observe_error("status")
            return
        try:
            theirs = predictions_of(answer)
        except Unparseable:
            self._metrics.observe_error("invalid_answer")
            return
        comparison = compare(predictions_of(copy.answer), theirs, self._config.tolerance)
        self._metrics.observe("agree" if comparison.agree else "disagree", comparison.differences)
