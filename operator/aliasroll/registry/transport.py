"""The registry client's HTTP: every call has a total deadline and a byte budget, both enforced while
the answer streams in, and connects only to addresses the egress allow-list accepts.

`requests` (which MLflow's client uses) times each socket read, not the call: a server that sends a
byte before each read timeout keeps a call going for ever, and answers are read whole into memory.
Here each call is watched: at its deadline the watchdog shuts its socket down, which ends a blocked
connect, TLS handshake, header or body read at once (the call then fails as "did not answer within
N s"); the body is read in chunks and the call fails as soon as it holds more than the budget (or the
server announces more). A connection is made only to the addresses its name resolves to at that
moment, after each is checked (`aliasroll.outbound.refuse_unless_allowed`, the check every outbound
client makes), so a name that changes its answer between the check and the call (DNS rebinding) is
caught. Name resolution itself is the one step the deadline cannot interrupt (the system resolver's
own timeouts bound it).

No proxy, .netrc or redirect is followed: the operator connects to the registry itself, so what the
egress check sees is what is called, and a redirect cannot lead a call somewhere unchecked.
"""

from __future__ import annotations

import contextlib
import heapq
import http.cookiejar
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as connection_util

from aliasroll.egress import Destinations
from aliasroll.outbound import DestinationRefusedError, refuse_unless_allowed

CHUNK_BYTES = 64 * 1024


class DeadlinePassed(Exception):
    """The call did not end within its deadline (it was cut)."""


class AnswerTooLarge(Exception):
    """The answer was longer than the byte budget (reading stopped there)."""


class OperatorBusy(Exception):
    """Reading on would take the operator past the bytes it holds for answers in flight (all
    registries together): the call stops, and is retried like an unreachable registry's."""


@dataclass(eq=False)
class _Call:
    """One call under way: its deadline, and the sockets it uses, for the watchdog to cut."""

    deadline: float
    destinations: Destinations | None
    expired: bool = False
    done: bool = False
    sockets: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            if self.done:
                return
            self.sockets.append(sock)
            if not self.expired:
                return
        _cut(sock)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            sockets = list(self.sockets)
        for sock in sockets:
            _cut(sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.sockets.clear()

    @property
    def past_deadline(self) -> bool:
        """Cut by the watchdog, or ended by a socket timeout at the same moment: on a busy machine
        the socket's own timer (the same length) can fire before the watchdog thread runs, and the
        call then did not answer within its deadline all the same."""
        return self.expired or time.monotonic() >= self.deadline


def _cut(sock: socket.socket) -> None:
    """Ends whatever another thread is blocked on with this socket. socket.socket's own shutdown,
    not SSLSocket's, which would drop the TLS state under the reader's feet."""
    # OSError: closed, detached (wrapped for TLS: that socket is attached too) or never connected.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread for every call of the process: cuts each call at its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Call]] = []
        self._condition = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, call: _Call) -> None:
        with self._condition:
            heapq.heappush(self._heap, (call.deadline, next(self._order), call))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="registry-deadlines", daemon=True)
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        call = heapq.heappop(self._heap)[2]
                        break
                    self._condition.wait(self._heap[0][0] - now if self._heap else None)
            call.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


def _call_in_progress() -> _Call | None:
    call: _Call | None = getattr(_current, "call", None)
    return call


class _GuardedConnectionMixin:
    """Resolves, checks every address, connects to a checked one; hands each socket to the call."""

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        call = _call_in_progress()
        try:
            infos = socket.getaddrinfo(
                conn._dns_host, conn.port, connection_util.allowed_gai_family(), socket.SOCK_STREAM
            )
        except socket.gaierror as error:
            raise NameResolutionError(conn.host, conn, error) from error
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if call is not None:
            refuse_unless_allowed(call.destinations, conn.host, addresses)
        last: OSError | None = None
        for address in addresses:
            try:
                sock = connection_util.create_connection(
                    (address, conn.port),
                    conn.timeout,
                    source_address=conn.source_address,
                    socket_options=conn.socket_options,
                )
            except TimeoutError as error:
                raise ConnectTimeoutError(
                    conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
                ) from error
            except OSError as error:
                last = error
                continue
            if call is not None:
                call.attach(sock)
            return sock
        raise NewConnectionError(conn, f"Failed to establish a new connection: {last}") from last

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        call = _call_in_progress()
        if call is not None:
            call.attach(self.sock)  # type: ignore[attr-defined]  # the TLS socket, once wrapped

    def request(self, *args: Any, **kwargs: Any) -> None:
        call = _call_in_progress()
        if call is not None:
            call.attach(self.sock)  # type: ignore[attr-defined]  # a connection kept from a call before
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise requests.exceptions.InvalidProxyURL("the registry client uses no proxy")


#: The bytes of answers being read, all registries together: what the operator's memory holds for
#: them at most (about a quarter of the Deployment's 512 MiB limit, over an idle operator's 110 MiB).
DEFAULT_BYTES_IN_FLIGHT = 128 * 1024 * 1024


class InFlight:
    """The bytes the calls under way hold, by host: every call's answer counts against one budget
    for its host (two answers' worth, however many calls to it run at once) and one for all hosts.
    A registry that streams without end, however many calls it gets, holds at most two answers'
    worth; only very many such registries together fill the whole. Past either, a call stops
    (OperatorBusy, retried like an unreachable registry) rather than the operator running out of
    memory."""

    def __init__(self, *, per_host: int, total: int) -> None:
        self.per_host, self.total = per_host, total
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._sum = 0

    def take(self, host: str, size: int) -> None:
        """Raises OperatorBusy past the host's budget or the whole."""
        with self._lock:
            held = self._held.get(host, 0)
            if held + size > self.per_host or self._sum + size > self.total:
                raise OperatorBusy()
            self._held[host] = held + size
            self._sum += size

    def give_back(self, host: str, size: int) -> None:
        with self._lock:
            held = self._held.get(host, 0) - size
            if held > 0:
                self._held[host] = held
            else:
                self._held.pop(host, None)
            self._sum -= size

    @property
    def held(self) -> int:
        with self._lock:
            return self._sum


class BoundedHttp:
    """HTTP calls with a total deadline and a byte budget; thread-safe, one connection pool per host
    (the least recently used of `hosts` are dropped)."""

    def __init__(
        self,
        *,
        max_answer_bytes: int,
        destinations: Destinations | None,
        hosts: int = 32,
        connections_per_host: int = 4,
        bytes_in_flight: int = DEFAULT_BYTES_IN_FLIGHT,
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.in_flight = InFlight(
            per_host=2 * max_answer_bytes, total=max(bytes_in_flight, 2 * max_answer_bytes)
        )
        self.destinations = destinations
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy, no .netrc: see the module's docstring
        # No cookies either: registries of different tenants may share a host, and one tenant's
        # session cookie must never go with another's calls.
        self._session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = _GuardedAdapter(pool_connections=hosts, pool_maxsize=connections_per_host, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str],
        params: Any = None,
        json: Any = None,
        insecure_tls: bool = False,
    ) -> requests.Response:
        """The answer, read whole (within the budget) by `timeout` seconds after the call began.

        Raises DeadlinePassed, AnswerTooLarge, DestinationRefusedError, or what `requests` raises
        for a connection that failed otherwise."""
        call = _Call(deadline=time.monotonic() + timeout, destinations=self.destinations)
        _current.call = call
        _WATCHDOG.watch(call)
        try:
            response = self._session.request(
                method,
                url,
                headers=dict(headers),
                params=params,
                json=json,
                timeout=(timeout, timeout),
                verify=_verify(insecure_tls),
                stream=True,
                allow_redirects=False,
            )
            try:
                content = self._read(response, host=urlsplit(url).netloc.lower())
            finally:
                response.close()
        except (DestinationRefusedError, AnswerTooLarge, OperatorBusy):
            raise
        except Exception as error:
            if call.past_deadline:
                raise DeadlinePassed() from error
            raise
        finally:
            call.finish()
            _current.call = None
        if call.expired:
            # A cut can look like an ending: headers that stop at the cut, a body without a length
            # read until the connection closed. Nothing read from a call that was cut is used.
            raise DeadlinePassed()
        response._content = content
        response._content_consumed = True  # type: ignore[attr-defined]
        # Never guessed from the bytes (slow on a large answer): MLflow answers JSON, which is UTF-8.
        response.encoding = response.encoding or "utf-8"
        return response

    def _read(self, response: requests.Response, *, host: str) -> bytes:
        budget = self.max_answer_bytes
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > budget:
            raise AnswerTooLarge()
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                if size + len(chunk) > budget:
                    raise AnswerTooLarge()
                self.in_flight.take(host, len(chunk))
                size += len(chunk)
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            # The answer is handed on (or dropped) now: what it holds from here is the caller's.
            self.in_flight.give_back(host, size)

    def close(self) -> None:
        self._session.close()


def _verify(insecure_tls: bool) -> bool | str:
    """MLflow's client verifies TLS with the CA bundle requests finds in the environment; the same here
    (the session reads no environment of its own)."""
    if insecure_tls:
        return False
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
