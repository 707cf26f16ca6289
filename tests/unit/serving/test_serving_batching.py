"""The micro-batcher's scheduling, with a stand-in model (no MLflow): what a lone request costs, what
a burst shares, and that failures reach the requests that caused them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import cast

import pytest

from aliasroll.serving.batching import Batcher
from aliasroll.serving.model import BatchOutcome, ServedModel
from aliasroll.serving.protocol import ParsedRequest, RequestError, decode


def request(text: str) -> ParsedRequest:
    return decode(f'{{"inputs": ["{text}"]}}'.encode(), "application/json")


class RecordingModel:
    """Answers each request with its own text; records the thread and the group of every call."""

    def __init__(self, *, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.started = threading.Event()
        self.entered = threading.Semaphore(0)  # released once per call
        self._gate = gate
        self._fail = fail

    def answer_group(self, group: Sequence[ParsedRequest]) -> BatchOutcome:
        texts = [r.payload[0] for r in group]
        self.calls.append((threading.current_thread().name, texts))
        self.started.set()
        self.entered.release()
        if self._gate is not None:
            assert self._gate.wait(10), "the test never opened the gate"
        if self._fail:
            raise ValueError("model broke")
        return BatchOutcome([text.encode() for text in texts], calls=[len(group)])


def batcher(model: RecordingModel, *, threads: int = 2) -> Batcher:
    return Batcher(cast(ServedModel, model), enabled=True, max_batch_rows=1024, threads=threads)


async def test_sequential_requests_reuse_one_predict_thread_and_wake_no_other() -> None:
    # A shared work queue (ThreadPoolExecutor's) hands sequential requests to its idle threads in
    # turn and wakes the others for nothing: each wake-up takes the GIL from the predicting thread,
    # which showed as a p99 at one client worse than `mlflow models serve`'s.
    gate = threading.Event()
    model = RecordingModel(gate=gate)
    scorer = batcher(model, threads=2)
    try:
        # First both threads busy at once (as under load), so that both exist and wait for work.
        first = asyncio.create_task(scorer.score(request("a")))
        assert await asyncio.to_thread(model.entered.acquire, True, 5)
        second = asyncio.create_task(scorer.score(request("b")))
        assert await asyncio.to_thread(model.entered.acquire, True, 5)
        gate.set()
        assert await asyncio.gather(first, second) == [b"a", b"b"]
        assert len({name for name, _ in model.calls}) == 2
        model.calls.clear()
        for index in range(20):
            assert await scorer.score(request(f"r{index}")) == f"r{index}".encode()
        threads = {name for name, _ in model.calls}
        assert len(threads) == 1, f"sequential requests ran on {sorted(threads)}"
        assert all(len(texts) == 1 for _, texts in model.calls)
        assert scorer.idle
    finally:
        gate.set()
        await scorer.close()


async def test_an_idle_server_predicts_a_lone_request_after_one_pass_of_the_loop() -> None:
    model = RecordingModel()
    scorer = batcher(model)
    try:
        task = asyncio.create_task(scorer.score(request("alone")))
        await asyncio.sleep(0)  # the request is read and queued
        await asyncio.sleep(0)  # the dispatch callback runs: no timer, no task to wake
        # Block the loop: if the dispatch still needed the loop, the model would never start.
        assert model.started.wait(5), "the lone request was not handed to a predict thread"
        assert await task == b"alone"
    finally:
        await scorer.close()


async def test_requests_read_together_share_one_predict_call() -> None:
    model = RecordingModel()
    scorer = batcher(model)
    try:
        answers = await asyncio.gather(*(scorer.score(request(f"b{index}")) for index in range(8)))
        assert answers == [f"b{index}".encode() for index in range(8)]
        assert [texts for _, texts in model.calls] == [[f"b{index}" for index in range(8)]]
    finally:
        await scorer.close()


async def test_requests_that_queue_while_every_thread_predicts_go_out_as_one_batch() -> None:
    gate = threading.Event()
    model = RecordingModel(gate=gate)
    scorer = batcher(model, threads=1)
    try:
        first = asyncio.create_task(scorer.score(request("first")))
        assert await asyncio.to_thread(model.started.wait, 5)
        rest = [asyncio.create_task(scorer.score(request(f"q{index}"))) for index in range(5)]
        await asyncio.sleep(0.01)
        assert len(model.calls) == 1  # the thread is busy: nothing else started
        gate.set()
        assert await first == b"first"
        assert await asyncio.gather(*rest) == [f"q{index}".encode() for index in range(5)]
        assert [texts for _, texts in model.calls] == [["first"], [f"q{index}" for index in range(5)]]
    finally:
        gate.set()
        await scorer.close()


async def test_a_failing_predict_call_fails_its_own_requests_and_the_server_keeps_scoring() -> None:
    model = RecordingModel(fail=True)
    scorer = batcher(model, threads=1)
    try:
        with pytest.raises(ValueError, match="model broke"):
            await scorer.score(request("x"))
        model._fail = False
        assert await scorer.score(request("y")) == b"y"
    finally:
        await scorer.close()


async def test_close_cancels_what_is_queued_refuses_new_requests_and_waits_for_calls_in_flight() -> None:
    gate = threading.Event()
    model = RecordingModel(gate=gate)
    scorer = batcher(model, threads=1)
    busy = asyncio.create_task(scorer.score(request("busy")))
    assert await asyncio.to_thread(model.started.wait, 5)
    queued = asyncio.create_task(scorer.score(request("queued")))
    await asyncio.sleep(0)
    closing = asyncio.create_task(scorer.close())
    await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await queued
    with pytest.raises(RequestError) as refused:
        await scorer.score(request("late"))
    assert refused.value.status == 503
    await asyncio.sleep(0.05)
    assert not closing.done(), "close() must wait for the call in flight (the drain contract)"
    gate.set()
    assert await busy == b"busy"  # a call already running still answers
    await asyncio.wait_for(closing, 5)


async def test_every_predict_call_of_a_group_is_observed_with_the_requests_it_scored() -> None:
    class Split(RecordingModel):
        def answer_group(self, group: Sequence[ParsedRequest]) -> BatchOutcome:
            outcome = super().answer_group(group)
            # As ServedModel says of a group it scored in a shared call and one of its own.
            return BatchOutcome(outcome.answers, calls=[len(group) - 1, 1] if len(group) > 1 else [1])

    model = Split()
    observed: list[int] = []
    scorer = Batcher(
        cast(ServedModel, model), enabled=True, max_batch_rows=1024, threads=1, on_batch=observed.append
    )
    try:
        await asyncio.gather(*(scorer.score(request(f"s{index}")) for index in range(3)))
        assert observed == [2, 1]
    finally:
        await scorer.close()
