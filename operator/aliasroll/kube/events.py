"""Kubernetes events about ModelDeployments (what `kubectl describe` and `kubectl get events` show).

One path for every event, whatever task asks: a pass started by a watch event, by the resync or by a
new leader's first round. `post()` only queues (a pass never waits on the API server for an event);
one worker writes them, in order, through the passes' fenced client, so a replica that stopped
leading writes none.

Repeats are folded as client-go's event recorder folds them: the same event about the same object
within `REPEAT_WINDOW_SECONDS` raises the first one's `count` and `lastTimestamp` instead of adding
another object (kubectl shows "x5 over 3m"). Both the queue and the memory of recent events are
bounded; what does not fit is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lightkube import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from aliasroll import metrics
from aliasroll.planning.state import EventRecord

log = logging.getLogger(__name__)

#: A repeat within this window counts on the first event (client-go's default is 10 minutes too).
REPEAT_WINDOW_SECONDS = 600.0
#: Events waiting to be written; beyond this the oldest are dropped (counted).
QUEUE_LIMIT = 1000
#: Recent events remembered for folding repeats.
REMEMBERED_LIMIT = 4096
#: The API server refuses longer messages (1 KiB in events.k8s.io); cut in the middle.
MESSAGE_LIMIT = 1024
#: Tries per event when the API server fails (not when it refuses: a 4xx is final).
ATTEMPTS = 3


class EventWriter(Protocol):
    """The part of lightkube's AsyncClient the recorder uses."""

    async def create(self, obj: Event, *, namespace: str | None = ...) -> Any: ...

    async def patch(
        self,
        res: type[Event],
        name: str,
        obj: Any,
        *,
        namespace: str | None = ...,
        patch_type: PatchType = ...,
    ) -> Any: ...


@dataclass(frozen=True)
class _Key:
    """What makes two events the same for folding."""

    uid: str
    type: str
    reason: str
    message: str


@dataclass
class _Written:
    namespace: str
    name: str
    count: int
    first_seen: float  # monotonic, for the window


@dataclass(frozen=True)
class _Pending:
    ref: ObjectReference
    record: EventRecord
    at: datetime


def _cut(message: str) -> str:
    if len(message) <= MESSAGE_LIMIT:
        return message
    half = (MESSAGE_LIMIT - 3) // 2
    return f"{message[:half]}...{message[-half:]}"


def object_reference(body: Mapping[str, Any]) -> ObjectReference:
    metadata = body.get("metadata") or {}
    return ObjectReference(
        apiVersion=body.get("apiVersion"),
        kind=body.get("kind"),
        name=metadata.get("name"),
        namespace=metadata.get("namespace"),
        uid=metadata.get("uid"),
        resourceVersion=metadata.get("resourceVersion"),
    )


class EventRecorder:
    """Queues events and writes them from one task (see the module's doc)."""

    def __init__(
        self,
        client: EventWriter,
        *,
        component: str,
        instance: str,
        may_write: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_delay: float = 1.0,
    ) -> None:
        self._client = client
        self._component = component
        self._instance = instance
        self._may_write = may_write
        self._clock = clock
        self._now = now
        self._retry_delay = retry_delay
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._written: OrderedDict[_Key, _Written] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        """Queue an event about `body` (a ModelDeployment); returns at once."""
        if not self._may_write():
            return  # not leading (any more): the leader tells what it does
        pending = _Pending(object_reference(body), event, self._now())
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self._queue.task_done()
                metrics.EVENTS.labels("dropped").inc()
        self._queue.put_nowait(pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_forever(), name="events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def drain(self) -> None:
        """Until every queued event is written or given up (tests, and a clean shutdown)."""
        await self._queue.join()

    async def _write_forever(self) -> None:
        while True:
            pending = await self._queue.get()
            try:
                outcome = await self._write(pending)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # never end the writer: the next event may well go through
                log.warning("event %s not written: %r", pending.record.reason, error)
                outcome = "failed"
            finally:
                self._queue.task_done()
            metrics.EVENTS.labels(outcome).inc()

    async def _write(self, pending: _Pending) -> str:
        if not self._may_write():
            return "dropped"
        key = _Key(pending.ref.uid or "", pending.record.type, pending.record.reason, pending.record.message)
        earlier = self._written.get(key)
        if earlier is not None and self._clock() - earlier.first_seen > REPEAT_WINDOW_SECONDS:
            del self._written[key]
            earlier = None
        if earlier is not None:
            count = earlier.count + 1
            folded = await self._attempt(
                lambda: self._client.patch(
                    Event,
                    earlier.name,
                    {"count": count, "lastTimestamp": pending.at.isoformat()},
                    namespace=earlier.namespace,
                    patch_type=PatchType.MERGE,
                ),
                missing_ok=True,
            )
            if folded:
                earlier.count = count
                self._written.move_to_end(key)
                return "folded"
            del self._written[key]  # gone (expired by the API server's TTL): write a new one
        namespace = pending.ref.namespace or "default"
        name = f"{pending.ref.name}.{time.time_ns():x}{secrets.token_hex(2)}"
        created = await self._attempt(
            lambda: self._client.create(self._event(name, namespace, pending), namespace=namespace)
        )
        if not created:
            return "failed"
        self._written[key] = _Written(namespace, name, 1, self._clock())
        while len(self._written) > REMEMBERED_LIMIT:
            self._written.popitem(last=False)
        return "written"

    def _event(self, name: str, namespace: str, pending: _Pending) -> Event:
        stamp = pending.at
        return Event(
            metadata=ObjectMeta(name=name, namespace=namespace),
            involvedObject=pending.ref,
            type=pending.record.type,
            reason=pending.record.reason,
            message=_cut(pending.record.message),
            count=1,
            firstTimestamp=stamp,
            lastTimestamp=stamp,
            source=EventSource(component=self._component),
            reportingComponent=self._component,
            reportingInstance=self._instance,
        )

    async def _attempt(self, call: Callable[[], Awaitable[Any]], *, missing_ok: bool = False) -> bool:
        """True once `call` succeeds; False when the API server refuses it (or, with `missing_ok`,
        no longer has the event) or fails `ATTEMPTS` times."""
        for attempt in range(1, ATTEMPTS + 1):
            if not self._may_write():
                return False
            try:
                await call()
            except ApiError as error:
                code = error.status.code or 0
                if missing_ok and code == 404:
                    return False
                if 400 <= code < 500 and code != 429:
                    log.warning("event refused by the API server: %s", error.status.message)
                    return False
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a fence closed meanwhile, a connection that broke
                log.debug("event write failed (attempt %d): %r", attempt, error)
            else:
                return True
            if attempt < ATTEMPTS:
                await asyncio.sleep(self._retry_delay * attempt)
        return False
