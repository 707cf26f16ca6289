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
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import uvicorn

from aliasroll.serving.app import ServingApp

log = logging.getLogger("aliasroll.serving")

# How long past DRAIN_SECONDS a predict call that outlived the drain may hold the process.
ABANDON_AFTER_SECONDS = 2.0
EXIT_ABANDONED = 1


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, app: ServingApp) -> None:
        super().__init__(config)
        self._app = app
        self._drain_seconds = app.config.drain_seconds
        self._accept_seconds = app.config.drain_accept_seconds
        self.drain_started: float | None = None
        self._drain_announced = False

    @classmethod
    def for_app(cls, app: ServingApp, **uvicorn_settings: Any) -> DrainingServer:
        config = uvicorn.Config(
            app,
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
