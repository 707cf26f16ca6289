"""The event recorder (kube/events.py): one path for every event whatever task posts it, repeats
folded into a count, bounded, written only while leading, refusals final and failures retried."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Event

from aliasroll import metrics
from aliasroll.kube import events as events_mod
from aliasroll.kube.events import EventRecorder
from aliasroll.planning.state import EventRecord

BODY = {
    "apiVersion": "aliasroll.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"},
}
ROLLED = EventRecord("Normal", "RolloutStarted", "production: version 1 -> 2")


def api_error(code: int) -> ApiError:
    request = httpx2.Request("POST", "https://api/events")
    response = httpx2.Response(
        code, json={"kind": "Status", "code": code, "message": f"code {code}"}, request=request
    )
    return ApiError(request=request, response=response)


class FakeWriter:
    def __init__(self) -> None:
        self.created: list[Event] = []
        self.patched: list[tuple[str, str | None, Any]] = []
        self.fail_creates: list[Exception] = []
        self.fail_patches: list[Exception] = []

    async def create(self, obj: Event, *, namespace: str | None = None) -> Any:
        if self.fail_creates:
            raise self.fail_creates.pop(0)
        self.created.append(obj)
        return obj

    async def patch(
        self, res: type[Event], name: str, obj: Any, *, namespace: str | None = None, **_: Any
    ) -> Any:
        if self.fail_patches:
            raise self.fail_patches.pop(0)
        self.patched.append((name, namespace, obj))
        return obj


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outcome(name: str) -> float:
    return metrics.EVENTS.labels(name)._value.get()


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def started(recorder: EventRecorder) -> EventRecorder:
    recorder.start()
    return recorder


async def test_an_event_is_a_core_v1_event_about_the_resource(writer: FakeWriter) -> None:
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="aliasroll-abc"))
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    await recorder.stop()
    [event] = writer.created
    assert event.metadata is not None
    assert event.metadata.namespace == "ml"
    assert event.metadata.name is not None
    assert event.metadata.name.startswith("sentiment.")
    assert (event.type, event.reason, event.message, event.count) == (
        "Normal",
        "RolloutStarted",
        ROLLED.message,
        1,
    )
    ref = event.involvedObject
    assert (ref.kind, ref.name, ref.namespace, ref.uid) == ("ModelDeployment", "sentiment", "ml", "u-1")
    assert event.source is not None
    assert event.source.component == "aliasroll"  # kubectl describe's "From"
    assert (event.reportingComponent, event.reportingInstance) == ("aliasroll", "aliasroll-abc")
    assert event.firstTimestamp == event.lastTimestamp


async def test_posting_from_a_task_no_framework_started_works(writer: FakeWriter) -> None:
    """What Kopf's own kopf.event could not do: a worker the resync starts is a plain asyncio task."""
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i"))

    async def worker() -> None:
        recorder.post(BODY, ROLLED)

    await asyncio.create_task(worker())
    await recorder.drain()
    await recorder.stop()
    assert [e.reason for e in writer.created] == ["RolloutStarted"]


async def test_a_repeat_within_the_window_counts_on_the_first_event(writer: FakeWriter, clock: Clock) -> None:
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i", clock=clock))
    for _ in range(3):
        recorder.post(BODY, ROLLED)
        await recorder.drain()
    clock.now += events_mod.REPEAT_WINDOW_SECONDS + 1
    recorder.post(BODY, ROLLED)  # after the window: a new event
    recorder.post(BODY, EventRecord("Normal", "RolloutStarted", "production: version 2 -> 3"))  # another text
    await recorder.drain()
    await recorder.stop()
    assert len(writer.created) == 3
    first = writer.created[0].metadata
    assert first is not None
    assert [(name, ns, patch["count"]) for name, ns, patch in writer.patched] == [
        (first.name, "ml", 2),
        (first.name, "ml", 3),
    ]


async def test_a_folded_event_that_is_gone_is_written_anew(writer: FakeWriter) -> None:
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i"))
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    writer.fail_patches.append(api_error(404))  # expired by the API server's event TTL
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    await recorder.stop()
    assert len(writer.created) == 2


async def test_nothing_is_written_while_not_leading(writer: FakeWriter) -> None:
    leading = False
    recorder = await started(
        EventRecorder(writer, component="aliasroll", instance="i", may_write=lambda: leading)
    )
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    assert writer.created == []
    leading = True
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    # Queued while leading, leadership gone before the write: dropped.
    dropped = outcome("dropped")
    recorder.post(BODY, EventRecord("Warning", "RolloutStalled", "stalled"))
    leading = False
    await recorder.drain()
    await recorder.stop()
    assert [e.reason for e in writer.created] == ["RolloutStarted"]
    assert outcome("dropped") == dropped + 1


async def test_a_refusal_is_final_and_a_failure_is_retried(writer: FakeWriter) -> None:
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i", retry_delay=0.0))
    writer.fail_creates += [api_error(422)]
    recorder.post(BODY, EventRecord("Normal", "Refused", "x"))
    await recorder.drain()
    assert writer.created == []
    writer.fail_creates += [api_error(500), ConnectionError("reset")]
    recorder.post(BODY, ROLLED)
    await recorder.drain()
    assert [e.reason for e in writer.created] == ["RolloutStarted"]  # the third attempt
    failed = outcome("failed")
    writer.fail_creates += [api_error(503)] * events_mod.ATTEMPTS
    recorder.post(BODY, EventRecord("Normal", "GivenUp", "y"))
    await recorder.drain()
    await recorder.stop()
    assert outcome("failed") == failed + 1
    assert [e.reason for e in writer.created] == ["RolloutStarted"]


async def test_the_queue_is_bounded_and_drops_the_oldest(
    writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_mod, "QUEUE_LIMIT", 3)
    recorder = EventRecorder(writer, component="aliasroll", instance="i")  # not started: nothing drains
    for n in range(5):
        recorder.post(BODY, EventRecord("Normal", "Step", f"step {n}"))
    recorder.start()
    await recorder.drain()
    await recorder.stop()
    assert [e.message for e in writer.created] == ["step 2", "step 3", "step 4"]


async def test_a_long_message_is_cut_in_the_middle(writer: FakeWriter) -> None:
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i"))
    recorder.post(BODY, EventRecord("Warning", "RolloutStalled", "a" * 2000 + "END"))
    await recorder.drain()
    await recorder.stop()
    message = writer.created[0].message
    assert message is not None
    assert len(message) <= events_mod.MESSAGE_LIMIT
    assert message.endswith("END")


async def test_memory_of_recent_events_is_bounded(
    writer: FakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_mod, "REMEMBERED_LIMIT", 2)
    recorder = await started(EventRecorder(writer, component="aliasroll", instance="i"))
    for n in range(4):
        recorder.post(BODY, EventRecord("Normal", "Step", f"step {n}"))
    await recorder.drain()
    await recorder.stop()
    assert len(recorder._written) == 2
