"""The operator's own HTTP listeners: the registry webhook receiver and the Prometheus metrics.

Both use aiohttp (which Kopf already brings) and listen only when their address is configured (the
operator's Deployment sets both); see docs/operations/webhooks.md and metrics.md.

The webhook receiver faces the network before anyone is authenticated, so it runs on an event loop of
its own, in its own thread (`ThreadedListener`): parsing requests and checking signatures never hold
the operator's loop, which renews the lease and runs the passes; only an accepted delivery's wake is
handed over to it (`on_this_loop`). In front of the check, without reading a body: a rate limit per
source address and one overall (429), a cap on requests in flight (429) and on the body's size
(413; MLflow's alias events are about 200 bytes) and time (408). It can serve HTTPS from a mounted
certificate, read again when the files change (cert-manager renews them in place).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from aliasroll.webhooks import PATH, STATUS, Outcome, WebhookReceiver

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# An alias event is about 200 bytes (194 measured, for a 30-character model name; MLflow keeps names
# and aliases to 256 characters each): 16 KiB is room to spare, and all a request may make us hold.
MAX_BODY = 16 << 10


@dataclass(frozen=True)
class ReceiverLimits:
    # Requests a second from one source address (an IPv6 /64 counts as one), and from all together;
    # each bucket holds `burst_seconds` of its rate (an alias moved on many models at once arrives
    # as a burst of deliveries from one MLflow server).
    per_source: float = 20.0
    total: float = 100.0
    burst_seconds: float = 3.0
    sources: int = 4096  # addresses remembered; the least recently seen go first
    in_flight: int = 8
    max_body: int = MAX_BODY
    body_seconds: float = 5.0  # a body not received by then is a slow sender holding a slot


class TokenBuckets:
    """One token bucket per key, `rate` tokens a second up to `burst`; at most `keys` buckets (the
    least recently used go: a forgotten key comes back with a full bucket, so the overall limit
    stays the bound for senders of many addresses)."""

    def __init__(
        self, *, rate: float, burst: float, keys: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._keys, self._clock = rate, burst, keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str = "") -> bool:
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._keys:
            self._buckets.popitem(last=False)
        return allowed


def source_key(address: str | None) -> str:
    """The rate limit's key for a peer: its IPv4 address, or its IPv6 /64 (one host may have many)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip)


def parse_listen(name: str, raw: str) -> tuple[str, int]:
    """`host:port` (`[::]:port` for IPv6) -> (host, port); a clear error otherwise."""
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"{name}={raw!r} is not host:port (for example 0.0.0.0:8443)")
    return host, int(port)


def on_this_loop(fn: Callable[P, T], *, timeout: float = 5.0) -> Callable[P, Awaitable[T]]:
    """`fn` for callers on another thread's event loop: it runs on the loop running now (the
    operator's), and the caller waits for its result, at most `timeout` seconds (TimeoutError)."""
    loop = asyncio.get_running_loop()

    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:
                future.set_exception(error)

        loop.call_soon_threadsafe(run)
        async with asyncio.timeout(timeout):
            return await asyncio.wrap_future(future)

    return call


class _TooLarge(Exception):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _TooLarge
    return b"".join(chunks)


def webhook_app(
    receiver: WebhookReceiver,
    *,
    standby: Callable[[], bool] = lambda: False,
    limits: ReceiverLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    front = _Admission(receiver, standby=standby, limits=limits or ReceiverLimits(), clock=clock)
    app = web.Application(client_max_size=front.limits.max_body, middlewares=[front.admit])
    app.router.add_post(PATH, front.deliver)
    app.router.add_post(PATH + "/{registry}", front.deliver)
    return app


class _Admission:
    """The receiver's front: the rate limits and the cap on requests in flight (`admit`, before any
    route), then the body's size and time (`deliver`), each refusal counted and answered at once."""

    def __init__(
        self,
        receiver: WebhookReceiver,
        *,
        standby: Callable[[], bool],
        limits: ReceiverLimits,
        clock: Callable[[], float],
    ) -> None:
        self.receiver, self.standby, self.limits = receiver, standby, limits
        self.per_source = TokenBuckets(
            rate=limits.per_source,
            burst=max(1.0, limits.per_source * limits.burst_seconds),
            keys=limits.sources,
            clock=clock,
        )
        self.total = TokenBuckets(
            rate=limits.total, burst=max(1.0, limits.total * limits.burst_seconds), clock=clock
        )
        self.in_flight = 0

    def refuse(self, outcome: Outcome, reason: str, *, registry: str | None = None) -> web.Response:
        self.receiver.count(outcome, reason, registry=registry)
        headers = {"Retry-After": "1"} if outcome in (Outcome.RATE_LIMITED, Outcome.BUSY) else {}
        if outcome is Outcome.STANDBY:
            # Not the leader (docs/operations/high-availability.md): 503 makes MLflow retry, on a new
            # connection, which the Service may send to the leader; polling is the safety net.
            headers = {"Retry-After": "1", "Connection": "close"}
        # The listener does not linger to read what is left of a refused body (lingering_time=0):
        # the connection closes after the answer.
        return web.json_response({"outcome": outcome.value}, status=STATUS[outcome], headers=headers)

    @web.middleware
    async def admit(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        source = source_key(request.remote)
        if not self.per_source.take(source):
            return self.refuse(Outcome.RATE_LIMITED, f"more than {self.limits.per_source:g}/s from {source}")
        if not self.total.take():
            return self.refuse(Outcome.RATE_LIMITED, f"more than {self.limits.total:g}/s in all")
        if self.in_flight >= self.limits.in_flight:
            return self.refuse(Outcome.BUSY, f"{self.in_flight} requests already in flight")
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def deliver(self, request: web.Request) -> web.Response:
        if self.standby():
            return self.refuse(Outcome.STANDBY, "this replica does not lead")
        registry = self.receiver.registry(request.path)
        if registry is None:
            where = request.path[:80]
            return self.refuse(Outcome.UNKNOWN_REGISTRY, f"no registry is configured at {where!r}")
        body = await self._body(request, registry=registry.name)
        if isinstance(body, web.Response):
            return body
        status, outcome = await self.receiver.receive(registry, request.headers, body)
        return web.json_response({"outcome": outcome.value}, status=status)

    async def _body(self, request: web.Request, *, registry: str) -> bytes | web.Response:
        """The request's body, or the refusal of one too large or too slow."""
        limits = self.limits
        if (request.content_length or 0) > limits.max_body:
            return self.refuse(
                Outcome.TOO_LARGE,
                f"{request.content_length} bytes (at most {limits.max_body})",
                registry=registry,
            )
        try:
            async with asyncio.timeout(limits.body_seconds):
                return await _read_body(request, limits.max_body)
        except _TooLarge:
            return self.refuse(Outcome.TOO_LARGE, f"over {limits.max_body} bytes", registry=registry)
        except TimeoutError:
            return self.refuse(
                Outcome.SLOW, f"no whole body within {limits.body_seconds:g} s", registry=registry
            )


def metrics_app() -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


class ServerTLS:
    """HTTPS from a certificate and key in PEM files (a mounted `kubernetes.io/tls` Secret: tls.crt,
    tls.key), loaded again when either file changes: new connections get the renewed certificate."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._loaded = self._stamp()
        self._load()

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        return tuple((os.stat(path).st_mtime_ns, os.stat(path).st_size) for path in (self.cert, self.key))

    def _load(self) -> None:
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"cannot serve HTTPS with {self.cert} and {self.key}: {error}") from None

    def reload_if_changed(self) -> bool:
        """Loads the files again if they changed since last loaded; True if it did. A renewal caught
        half written fails and is tried again at the next look, the old certificate serving meanwhile."""
        try:
            stamp = self._stamp()
            if stamp == self._loaded:
                return False
            self._load()
        except (OSError, ValueError) as error:
            log.warning("webhook TLS: the certificate changed but could not be loaded (%s); retrying", error)
            return False
        self._loaded = stamp
        log.info("webhook TLS: certificate %s loaded again", self.cert)
        return True


class _UnparsableRequests(logging.Filter):
    """aiohttp logs a whole traceback for each request it cannot parse (a header line over its 8 KiB
    limit, a bad request line), before any handler or rate limit sees it: a stranger who reaches a
    listener could fill the operator's log with them. Such a request is answered 400 all the same;
    its traceback is dropped here, and counted (`dropped`)."""

    dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            type(self).dropped += 1
            return False
        return True


logging.getLogger("aiohttp.server").addFilter(_UnparsableRequests())


class Listener:
    """One aiohttp site on the operator's loop, started and stopped with the operator."""

    def __init__(self, what: str, app: web.Application, host: str, port: int) -> None:
        self.what = what
        self._runner = web.AppRunner(app, access_log=None)
        self._host, self._port = host, port

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        log.info("%s listening on %s:%d", self.what, self._host, self._port)

    async def stop(self) -> None:
        await self._runner.cleanup()


class ThreadedListener:
    """One aiohttp site on an event loop of its own, in a thread of its own: what it does holds the
    operator's loop only for what it hands over (`on_this_loop`). HTTPS when given `tls`."""

    def __init__(
        self,
        what: str,
        app: web.Application,
        host: str,
        port: int,
        *,
        tls: ServerTLS | None = None,
        tls_check_seconds: float = 60.0,
    ) -> None:
        self.what = what
        self._app, self._host, self._port = app, host, port
        self._tls, self._tls_check = tls, tls_check_seconds
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    async def start(self) -> None:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"aliasroll {self.what}", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)  # raises what the start raised (an address in use, ...)
        scheme = "https" if self._tls else "http"
        log.info("%s listening on %s://%s:%d (own thread)", self.what, scheme, self._host, self._port)

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error)
            else:
                log.exception("%s stopped", self.what)
        finally:
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._stopping = asyncio.Event()
        # lingering_time=0: a body left unread (a refused request) is not read to its end; the
        # connection closes instead.
        runner = web.AppRunner(self._app, access_log=None, lingering_time=0)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._host, self._port, ssl_context=self._tls.context if self._tls else None
            )
            await site.start()
            ready.set_result(None)
            while not self._stopping.is_set():
                try:
                    async with asyncio.timeout(self._tls_check):
                        await self._stopping.wait()
                except TimeoutError:
                    if self._tls is not None:
                        self._tls.reload_if_changed()
        finally:
            await runner.cleanup()

    async def stop(self) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop already ended
            loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join, 10.0)
