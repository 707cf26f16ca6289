"""Hostile HTTP endpoints on 127.0.0.1, as a tenant's pod or Prometheus may behave: one that drips a
byte at a time, streams without end, sends a huge body, or never answers. Each counts what it sent
and sees when the operator closes the connection; a client transport counts the body bytes the
operator read (whatever the code under test does with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx2

# Every byte a hostile endpoint sends spells this, so a test can tell whether any of it reached a
# message: nothing a remote wrote may.
MARKER = b"REMOTE-WROTE-THIS"
HUGE = 30 * 1024 * 1024


@dataclass
class Behaviour:
    """What the endpoint does once it has read a request."""

    mode: str  # drip | endless | huge | huge-chunked | silent | drip-head | answer
    every: float = 0.5  # drip: seconds between bytes
    status: int = 200
    body: bytes = b""  # answer: sent as it is
    headers: tuple[tuple[str, str], ...] = ()
    line: bytes = b"# " + MARKER + b"\n"  # what endless and huge repeat (exposition comment lines)


@dataclass
class Hostile:
    behaviour: Behaviour
    port: int = 0
    sent: int = 0  # body bytes written to sockets
    connections: int = 0
    open: int = 0
    closed_at: list[float] = field(default_factory=list)  # when the client was seen to go
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # no connection open
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)  # notified as `open` changes
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Hostile:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=256)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # its handler sees the connection go, and ends
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open += 1
        self.idle.clear()
        await self._notify()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    await reader.readexactly(int(value))
            await self._behave(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            if not self.open:
                self.idle.set()
            await self._notify()
            self.closed_at.append(time.monotonic())
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def opened(self, count: int) -> None:
        """Waits until `count` connections are open at once."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.open >= count)

    async def _behave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        extra = "".join(f"{name}: {value}\r\n" for name, value in b.headers)
        if b.mode == "silent":
            await reader.read(1)  # b"" once the client hangs up
            return
        if b.mode == "drip-head":
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + MARKER * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                if await _gone(reader, b.every):
                    return
            return
        if b.mode == "answer":
            writer.write(
                f"HTTP/1.1 {b.status} X\r\nContent-Length: {len(b.body)}\r\n{extra}\r\n".encode() + b.body
            )
            await writer.drain()
            await reader.read(1)
            return
        if b.mode == "huge":
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n{extra}\r\n".encode())
        else:
            writer.write(f"HTTP/1.1 {b.status} OK\r\nTransfer-Encoding: chunked\r\n{extra}\r\n".encode())
        await writer.drain()
        if b.mode == "drip":
            while True:
                writer.write(b"1\r\n" + MARKER[self.sent % len(MARKER) :][:1] + b"\r\n")
                await writer.drain()
                self.sent += 1
                if await _gone(reader, b.every):
                    return
        piece = b.line * max(1, 65536 // len(b.line))
        while b.mode == "endless" or self.sent < HUGE:
            if b.mode == "huge":
                piece = piece[: HUGE - self.sent]
                writer.write(piece)
            else:
                writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
            self.sent += len(piece)
        if b.mode == "huge-chunked":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        await reader.read(1)


async def _gone(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Waits `seconds`; True when the client hung up meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False


@contextlib.asynccontextmanager
async def hostile(behaviour: Behaviour) -> AsyncIterator[Hostile]:
    server = await Hostile(behaviour).start()
    try:
        yield server
    finally:
        await server.stop()


class Counting(httpx2.AsyncHTTPTransport):
    """The real network transport, counting the body bytes the client takes from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        inner = response.stream
        assert isinstance(inner, httpx2.AsyncByteStream)
        counter = self

        class Counted(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for piece in inner:
                    counter.read += len(piece)
                    yield piece

            async def aclose(self) -> None:
                await inner.aclose()

        response.stream = Counted()
        return response
