"""One mirrored request to the shadow: an HTTP/1.1 POST with a total deadline and a byte budget on the
answer, enforced while it streams in.

The shadow runs a tenant's model, so its answer is treated as hostile: a status line and headers of
at most `HEADER_BYTES`, a body cut as soon as it passes `max_answer_bytes` (a declared
Content-Length over the budget is refused before any of the body is read), and everything (connect,
send, answer) inside one deadline. Nothing of the answer is logged; failures are told by a reason
from a closed set (`ShadowErrorReason`), a metric label.

HTTP is h11's, over asyncio's streams: h11 is in the serving image already (uvicorn's own HTTP/1.1
implementation), and a sans-I/O parser leaves reading, and so the budget and the deadline, to this
module. The image has no async HTTP client (httpx and aiohttp are not in it), and requests or urllib3
would hold a thread per call that a deadline cannot stop. One connection a call, closed after it
(`Connection: close`): a new connection is also what lets kube-proxy spread the copies over the
shadow's pods. The shadow's name is resolved at most every `RESOLVE_SECONDS` (a Service's ClusterIP
does not move; a lookup per copy would cost, with the pods' `ndots: 5`, several DNS queries each).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Literal

import h11

from aliasroll.serving.config import ShadowConfig

# Why a call to the shadow gave no answer to compare (a metric label: a closed set). `timeout` is
# the deadline's, counted as an outcome of its own (mirror.py).
ShadowErrorReason = Literal["connection", "protocol", "too_large", "status", "invalid_answer"]
SHADOW_ERROR_REASONS: tuple[ShadowErrorReason, ...] = (
    "connection",
    "protocol",
    "too_large",
    "status",
    "invalid_answer",
)
# The status line and headers of the shadow's answer, at most.
HEADER_BYTES = 16 * 1024
READ_BYTES = 64 * 1024
MIRROR_HEADER = b"x-aliasroll-mirror"
RESOLVE_SECONDS = 30.0
# (host, port) -> (address, when it was resolved): one entry, the shadow's.
_resolved: dict[tuple[str, int], tuple[str, float]] = {}


class ShadowCallError(Exception):
    def __init__(self, reason: ShadowErrorReason) -> None:
        super().__init__(reason)
        self.reason: ShadowErrorReason = reason


async def post(shadow: ShadowConfig, body: bytes, *, content_type: str, mark: bytes) -> tuple[int, bytes]:
    """POSTs `body` to the shadow's /invocations; its status and body. Raises TimeoutError past
    `shadow.timeout_seconds`, ShadowCallError for every other failure."""
    async with asyncio.timeout(shadow.timeout_seconds):
        try:
            address = await _address(shadow.host, shadow.port)
            reader, writer = await asyncio.open_connection(address, shadow.port, limit=READ_BYTES)
        except TimeoutError:
            raise
        except OSError:
            _resolved.pop((shadow.host, shadow.port), None)  # looked up again on the next copy
            raise ShadowCallError("connection") from None
        try:
            return await _exchange(shadow, reader, writer, body, content_type=content_type, mark=mark)
        finally:
            writer.transport.abort()


async def _address(host: str, port: int) -> str:
    """The shadow's address, looked up at most every RESOLVE_SECONDS (a failure raises OSError)."""
    now = time.monotonic()
    cached = _resolved.get((host, port))
    if cached is not None and now - cached[1] < RESOLVE_SECONDS:
        return cached[0]
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not found:
        raise OSError(f"no address for {host}")
    address = str(found[0][4][0])
    _resolved.clear()
    _resolved[(host, port)] = (address, now)
    return address


async def _exchange(
    shadow: ShadowConfig,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    body: bytes,
    *,
    content_type: str,
    mark: bytes,
) -> tuple[int, bytes]:
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_BYTES)
    request = h11.Request(
        method="POST",
        target=shadow.path,
        headers=[
            (b"host", shadow.authority.encode()),
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (MIRROR_HEADER, mark),
        ],
    )
    try:
        writer.write(connection.send(request) or b"")
        writer.write(connection.send(h11.Data(data=body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return await _answer(connection, reader, shadow.max_answer_bytes)
    except h11.ProtocolError:
        raise ShadowCallError("protocol") from None
    except TimeoutError:
        raise
    except OSError:
        raise ShadowCallError("connection") from None


async def _answer(connection: h11.Connection, reader: asyncio.StreamReader, budget: int) -> tuple[int, bytes]:
    status = 0
    chunks: list[bytes] = []
    size = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_BYTES)
            if not data and status == 0:  # closed before an answer began
                raise ShadowCallError("connection")
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            declared = dict(event.headers).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > budget:
                raise ShadowCallError("too_large")
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > budget:
                raise ShadowCallError("too_large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return status, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            raise ShadowCallError("connection")
        elif event is h11.PAUSED:  # more than one answer: not what was asked
            raise ShadowCallError("protocol")
        # h11.InformationalResponse (100 Continue and the like): read on.
