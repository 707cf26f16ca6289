"""What every outbound call to an endpoint a tenant chooses shares, whichever client makes it (the
registry's, registry.transport on requests; the canary analysis', analysis.fetch on httpx): the words
its failures are said in, and the egress check made when a connection is made.

The words complete "<the endpoint> ...": "did not answer within 10 s", "answered more than 4 MiB",
"is not called: <why>". Each caller names the endpoint and adds its own setting to look at.

The check (`refuse_unless_allowed`, with the operator's allow-list: aliasroll.egress.Destinations)
runs where the connection is made, on the addresses the host name resolved to at that moment, and
the connection goes to one of those checked addresses, never to a name resolved again: a name that
changes its answer between a check and the call (DNS rebinding), or a redirect, cannot lead a call
somewhere unchecked. `GuardedTransport` is that check for httpx clients; the registry's connections
make it in their own connect step.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import httpcore2
import httpx2


def size(count: int) -> str:
    """4194304 -> "4 MiB"; 262144 -> "256 KiB"; 1000 -> "1000 bytes"."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale and count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


def no_answer_within(seconds: float) -> str:
    """An endpoint past its call's total deadline."""
    return f"did not answer within {seconds:g} s"


def more_than(limit: int) -> str:
    """An endpoint whose answer is longer than the call's byte budget."""
    return f"answered more than {size(limit)}"


def not_called(reason: str) -> str:
    """An endpoint the egress allow-list refuses: `reason` is the allow-list's."""
    return f"is not called: {reason}"


class DestinationRefusedError(Exception):
    """The destination resolved to an address the allow-list refuses; nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectCheck(Protocol):
    """The allow-list as a connection sees it (aliasroll.egress.Destinations)."""

    def check_connection(self, host: str, addresses: Sequence[str]) -> str | None:
        """Why `host` may not be reached at `addresses` (what it resolved to), or None."""
        ...


def refuse_unless_allowed(check: ConnectCheck | None, host: str, addresses: Sequence[str]) -> None:
    """Raises DestinationRefusedError when `check` refuses `host` at any of `addresses` (None: no
    check, for tests and tools that pick their URLs)."""
    if check is not None and (reason := check.check_connection(host, addresses)) is not None:
        raise DestinationRefusedError(reason)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now, each once, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend that resolves the host, checks every address it resolved to, and
    connects to one of those (the TLS handshake still names the host)."""

    def __init__(
        self, check: ConnectCheck | None, inner: httpcore2.AsyncNetworkBackend | None = None
    ) -> None:
        self._check = check
        self._inner = inner or httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await resolve(host, port)
        except OSError as error:
            raise httpcore2.ConnectError(f"{host} does not resolve") from error
        refuse_unless_allowed(self._check, host, addresses)
        last: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as error:
                last = error
        raise last or httpcore2.ConnectError(f"{host} resolves to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("outbound calls go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx's transport, connecting only where `check` allows (GuardedBackend), with no proxy or
    .netrc from the environment: what the check sees is what is called."""

    def __init__(self, check: ConnectCheck | None, **settings: Any) -> None:
        super().__init__(trust_env=False, **settings)
        # The one backend its connection pool makes every connection with.
        self._pool._network_backend = GuardedBackend(check)
