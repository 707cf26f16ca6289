"""uvicorn, with the drain a Kubernetes pod needs in front of uvicorn's own graceful shutdown.

On SIGTERM (or a first SIGINT), for at most `DRAIN_SECONDS`:
1. at once, /ready answers 503, so the pod leaves the Service's endpoints even without a preStop hook;
2. for `DRAIN_ACCEPT_SECONDS`, new requests are still accepted and scored: clients whose routing has
   not caught up yet (kube-proxy, an ingress) are answered rather than refused;
3. then uvicorn's shutdown: the listener closes, idle keep-alive connections close, and requests in
   flight finish, up to `timeout_graceful_shutdown` (what is left of DRAIN_SECONDS), after which
   uvicorn cancels them;
4. a predict call cannot be cancelled (it runs in a thread): if one still runs 2 s past DRAIN_SECONDS,
   the process exits anyway (code 1), so it never waits for the kubelet's SIGKILL.
The process exits 0 after a drain that finished in time.

Its HTTP protocols are uvicorn's (httptools, or h11), which also note when each connection was opened,
in the scope of every request on it: app.py answers `Connection: close` once a connection is older
than `ALIASROLL_MAX_CONNECTION_AGE_SECONDS`, and uvicorn then closes it after that answer. The time
is an attribute of the connection's protocol object, gone with the connection: no table of
connections to bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aliasroll.serving.app import CONNECTION_OPENED, ServingApp

log = logging.getLogger("aliasroll.serving")

# How long past DRAIN_SECONDS a predict call that outlived the drain may hold the process.
ABANDON_AFTER_SECONDS = 2.0
EXIT_ABANDONED = 1


class AgedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol, which gives each request on a connection the time it was opened."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn copies app_state into each request's scope["state"]: a copy of its own, per
        # connection, with the time, before the first request is parsed.
        self.app_state = {**self.app_state, CONNECTION_OPENED: time.monotonic()}
        super().connection_made(transport)


class AgedH11Protocol(H11Protocol):
    """h11's protocol, likewise."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.app_state = {**self.app_state, CONNECTION_OPENED: time.monotonic()}
        super().connection_made(transport)


PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "httptools": AgedHttpToolsProtocol,
    "h11": AgedH11Protocol,
}


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, app: ServingApp) -> None:
        super().__init__(config)
        self._app = app
        self._drain_seconds = app.config.drain_seconds
        self._accept_seconds = app.config.drain_accept_seconds
        self.drain_started: float | None = None
        self._drain_announced = False

    @classmethod
    def for_app(cls, app: ServingApp, *, http: str = "httptools", **uvicorn_settings: Any) -> DrainingServer:
        if http not in PROTOCOLS:
            raise ValueError(f"http={http!r}: the model server runs on {' or '.join(PROTOCOLS)}")
        config = uvicorn.Config(
            app,
            http=PROTOCOLS[http],
            # uvicorn's own mechanism finishes what is in flight once the accept window is over.
            timeout_graceful_shutdown=app.config.drain_seconds - app.config.drain_accept_seconds,
            **uvicorn_settings,
        )
        return cls(config, app=app)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs between two bytecodes of the event loop's thread, which may
        # hold a lock (logging, metrics); so only plain assignments here, the rest in on_tick.
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self._app.draining = True
        elif sig == signal.SIGINT:  # a second Ctrl-C: stop waiting
            self.force_exit = True
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None:
            if not self._drain_announced:
                self._drain_announced = True
                self._announce_drain()
            if time.monotonic() - self.drain_started >= self._accept_seconds:
                self.should_exit = True
        return await super().on_tick(counter)

    def _announce_drain(self) -> None:
        log.info(
            "draining: not ready; accepting requests for %d s, then finishing those in flight "
            "(at most %d s in all)",
            self._accept_seconds,
            self._drain_seconds,
        )
        self._app.metrics.set_ready(False)
        assert self.drain_started is not None
        remaining = self.drain_started + self._drain_seconds + ABANDON_AFTER_SECONDS - time.monotonic()
        watchdog = threading.Timer(max(remaining, 0.0), _abandon)
        watchdog.daemon = True  # it must never be what keeps the process alive
        watchdog.start()


def _abandon() -> None:
    log.error(
        "still running %.0f s past the drain deadline (a predict call or the model download that "
        "cannot be interrupted): exiting without waiting for it",
        ABANDON_AFTER_SECONDS,
    )
    logging.shutdown()
    os._exit(EXIT_ABANDONED)
