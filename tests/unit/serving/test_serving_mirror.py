"""Shadow traffic's mechanics (serving/mirror.py, serving/shadow_client.py): the share taken, the
bounded queue and its drops, the bound on calls at once, each outcome of a pair, and the HTTP call to
a shadow that answers, floods, hangs or speaks garbage (real listeners on loopback)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aliasroll.serving.config import ShadowConfig
from aliasroll.serving.mirror import Mirror, Sampler
from aliasroll.serving.shadow_client import ShadowCallError, post
from aliasroll.serving.shadow_metrics import PairMetrics

LABELS = {"model": "m", "version": "2", "track": "production"}
OWN = b'{"predictions": [1, 0]}'


def shadow(**overrides: Any) -> ShadowConfig:
    return ShadowConfig(**{"host": "127.0.0.1", "port": 9, "path": "/invocations", **overrides})


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def pairs(registry: CollectorRegistry) -> dict[str, float]:
    outcomes = ("agree", "disagree", "shadow_error", "timeout", "dropped")
    return {o: value(registry, "aliasroll_serving_shadow_pairs_total", outcome=o) for o in outcomes}


# --- the share ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "offers", "taken"), [(100, 10, 10), (50, 10, 5), (12.5, 80, 10), (0.1, 1000, 1), (30, 10, 3)]
)
def test_the_share_is_exact(percent: float, offers: int, taken: int) -> None:
    sampler = Sampler(percent)
    assert sum(sampler.take() for _ in range(offers)) == taken


def test_the_share_is_spread_evenly() -> None:
    sampler = Sampler(50)
    assert [sampler.take() for _ in range(6)] == [False, True] * 3


# --- the queue, the workers and the outcomes ---------------------------------------------------


class FakeShadow:
    """Answers each copy with `answer` (or raises it), once `gate` is open; counts calls at once."""

    def __init__(self, answer: tuple[int, bytes] | BaseException = (200, OWN)) -> None:
        self.answer = answer
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[tuple[bytes, str, bytes]] = []
        self.at_once = 0
        self.most_at_once = 0

    async def __call__(
        self, config: ShadowConfig, body: bytes, *, content_type: str, mark: bytes
    ) -> tuple[int, bytes]:
        self.calls.append((body, content_type, mark))
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await self.gate.wait()
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer
        finally:
            self.at_once -= 1


@asynccontextmanager
async def mirroring(
    fake: Callable[..., Awaitable[tuple[int, bytes]]], **overrides: Any
) -> AsyncIterator[tuple[Mirror, CollectorRegistry]]:
    registry = CollectorRegistry()
    mirror = Mirror(shadow(**overrides), PairMetrics(registry, LABELS), mark=b"1", send=fake)
    mirror.start()
    try:
        yield mirror, registry
    finally:
        await mirror.close()


async def settle(registry: CollectorRegistry, total: int) -> None:
    """Until `total` pairs are counted."""
    for _ in range(1000):
        if sum(pairs(registry).values()) >= total:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{pairs(registry)} never reached {total}")


async def test_agreeing_and_disagreeing_answers_are_counted_with_their_differences() -> None:
    fake = FakeShadow((200, b'{"predictions": [1, 1]}'))
    async with mirroring(fake, tolerance=0.5) as (mirror, registry):
        mirror.offer(b'{"inputs": [1, 2]}', "application/json", OWN)
        mirror.offer(b'{"inputs": [1, 1]}', "application/json", b'{"predictions": [1, 1]}')
        await settle(registry, 2)
    assert pairs(registry) == {"agree": 1, "disagree": 1, "shadow_error": 0, "timeout": 0, "dropped": 0}
    assert value(registry, "aliasroll_serving_shadow_abs_difference_count") == 4
    assert value(registry, "aliasroll_serving_shadow_abs_difference_sum") == 1
    # The copy is the request as it came: its body and content type, marked.
    assert fake.calls[0] == (b'{"inputs": [1, 2]}', "application/json", b"1")


async def test_a_full_queue_drops_and_counts_and_never_waits() -> None:
    fake = FakeShadow()
    fake.gate.clear()
    async with mirroring(fake, queue=2, concurrency=1) as (mirror, registry):
        for _ in range(5):  # offered with no await between them: the worker has taken none yet
            mirror.offer(b"{}", "application/json", OWN)
        assert pairs(registry)["dropped"] == 3
        assert value(registry, "aliasroll_serving_shadow_queue") == 2
        await asyncio.sleep(0.01)  # the worker takes one: a place is free again
        mirror.offer(b"{}", "application/json", OWN)
        mirror.offer(b"{}", "application/json", OWN)
        assert pairs(registry)["dropped"] == 4
        fake.gate.set()
        await settle(registry, 7)
        assert value(registry, "aliasroll_serving_shadow_queue") == 0
    assert pairs(registry) == {"agree": 3, "disagree": 0, "shadow_error": 0, "timeout": 0, "dropped": 4}


async def test_the_queue_holds_at_most_its_bytes() -> None:
    fake = FakeShadow()
    fake.gate.clear()
    async with mirroring(fake, queue_bytes=len(OWN) * 2 + 10) as (mirror, registry):
        for _ in range(3):
            mirror.offer(b"12345", "application/json", OWN)  # each holds len(OWN) + 5 bytes
        assert pairs(registry)["dropped"] == 1
        fake.gate.set()
        await settle(registry, 3)
    assert pairs(registry)["agree"] == 2


async def test_at_most_the_concurrency_of_calls_at_once() -> None:
    fake = FakeShadow()
    fake.gate.clear()
    async with mirroring(fake, queue=20, concurrency=3) as (mirror, registry):
        for _ in range(12):
            mirror.offer(b"{}", "application/json", OWN)
        await asyncio.sleep(0.02)
        assert fake.at_once == 3
        fake.gate.set()
        await settle(registry, 12)
    assert fake.most_at_once == 3
    assert pairs(registry)["agree"] == 12


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        (TimeoutError(), "timeout", None),
        (ShadowCallError("too_large"), "shadow_error", "too_large"),
        (ShadowCallError("connection"), "shadow_error", "connection"),
        ((500, b'{"error_code": "INTERNAL_ERROR"}'), "shadow_error", "status"),
        ((200, b"<html>"), "shadow_error", "invalid_answer"),
        ((200, b'{"error_code": "x"}'), "shadow_error", "invalid_answer"),
        ((200, b'{"predictions": [1]}'), "disagree", None),
        (RuntimeError("a bug"), "shadow_error", "protocol"),
    ],
)
async def test_each_outcome(answer: Any, outcome: str, reason: str | None) -> None:
    async with mirroring(FakeShadow(answer)) as (mirror, registry):
        mirror.offer(b"{}", "application/json", OWN)
        mirror.offer(b"{}", "application/json", OWN)  # the worker lives on after any of them
        await settle(registry, 2)
    assert pairs(registry)[outcome] == 2
    if reason is not None:
        assert value(registry, "aliasroll_serving_shadow_errors_total", reason=reason) == 2


async def test_closing_stops_the_workers_in_flight() -> None:
    fake = FakeShadow()
    fake.gate.clear()
    async with mirroring(fake) as (mirror, _):
        mirror.offer(b"{}", "application/json", OWN)
        await asyncio.sleep(0.01)
        assert fake.at_once == 1
    assert fake.at_once == 0


# --- the HTTP call -----------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def listening(handler: Handler) -> AsyncIterator[int]:
    """A listener on loopback whose connections `handler` serves; they end with the block."""
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_a_call_sends_the_copy_and_reads_the_answer() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n")
        writer.write(b'{"predictions": [1]}')
        await writer.drain()
        writer.close()

    async with listening(answer) as port:
        status, body = await post(
            shadow(port=port, path="/p/invocations"),
            b'{"inputs": [1]}',
            content_type="application/json",
            mark=b"tok",
        )
    assert (status, body) == (200, b'{"predictions": [1]}')
    head, sent = seen[0]
    assert head.startswith(b"POST /p/invocations HTTP/1.1\r\n")
    assert b"x-aliasroll-mirror: tok\r\n" in head
    assert b"content-type: application/json\r\n" in head
    assert b"connection: close\r\n" in head
    assert sent == b'{"inputs": [1]}'


async def test_a_declared_length_over_the_budget_is_refused_before_the_body() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with listening(answer) as port:
        with pytest.raises(ShadowCallError) as raised:
            await post(
                shadow(port=port, max_answer_bytes=1000), b"{}", content_type="application/json", mark=b"1"
            )
    assert raised.value.reason == "too_large"


async def test_a_flood_is_cut_at_the_budget_while_it_streams() -> None:
    written: list[int] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
        try:
            for _ in range(100_000):  # 6.5 GB if nothing stopped it
                writer.write(b"1," * 32768)
                await writer.drain()
                written.append(65536)
        except (ConnectionError, OSError):
            pass

    async with listening(flood) as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ShadowCallError) as raised:
            await post(
                shadow(port=port, max_answer_bytes=256 * 1024, timeout_seconds=30),
                b"{}",
                content_type="application/json",
                mark=b"1",
            )
        assert loop.time() - started < 5
        await asyncio.sleep(0.2)
    assert raised.value.reason == "too_large"
    # What the flood got out before the connection closed: the budget plus the sockets' buffers.
    assert sum(written) < 64 * 1024 * 1024


async def test_a_hanging_shadow_is_cut_at_the_deadline() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with listening(hang) as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await post(
                shadow(port=port, timeout_seconds=0.2), b"{}", content_type="application/json", mark=b"1"
            )
        assert loop.time() - started < 1


async def test_a_shadow_that_never_reads_the_copy_is_cut_at_the_deadline() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with listening(deaf) as port:
        with pytest.raises(TimeoutError):
            await post(
                shadow(port=port, timeout_seconds=0.3),
                b"x" * (32 << 20),
                content_type="application/json",
                mark=b"1",
            )


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"garbage\r\n\r\n", "protocol"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n", "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", "protocol"),
        (b"", "connection"),
    ],
    ids=["not HTTP", "headers over their bound", "closed mid-body", "closed without an answer"],
)
async def test_a_broken_answer_is_an_error_with_its_reason(reply: bytes, reason: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with listening(answer) as port:
        with pytest.raises(ShadowCallError) as raised:
            await post(shadow(port=port), b"{}", content_type="application/json", mark=b"1")
    assert raised.value.reason == reason


async def test_no_shadow_listening_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ShadowCallError) as raised:
        await post(shadow(port=port), b"{}", content_type="application/json", mark=b"1")
    assert raised.value.reason == "connection"


async def test_the_shadow_is_looked_up_once_not_per_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from aliasroll.serving import shadow_client

    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    real = loop.getaddrinfo

    async def counting(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    monkeypatch.setattr(shadow_client, "_resolved", {})

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    async with listening(answer) as port:
        for _ in range(3):
            await post(shadow(host="localhost", port=port), b"{}", content_type="application/json", mark=b"1")
        assert lookups == ["localhost"]
        # A connection that fails forgets the address: the next copy looks it up again.
        # (the listener is on 127.0.0.1 alone: 127.0.0.2 refuses)
        shadow_client._resolved[("localhost", port)] = ("127.0.0.2", time.monotonic())
        with pytest.raises(ShadowCallError):
            await post(shadow(host="localhost", port=port), b"{}", content_type="application/json", mark=b"1")
        await post(shadow(host="localhost", port=port), b"{}", content_type="application/json", mark=b"1")
        assert lookups == ["localhost", "localhost"]
