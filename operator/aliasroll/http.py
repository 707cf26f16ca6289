"""The operator's own HTTP listeners: the registry webhook receiver and the Prometheus metrics.

Both run in the operator's event loop (aiohttp, which Kopf already brings). Each listens only when
its address is configured (the operator's Deployment sets both); see README "Push" and "Metrics".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from aliasroll import metrics
from aliasroll.webhooks import PATH, WebhookReceiver

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # alias events are a few hundred bytes


def parse_listen(name: str, raw: str) -> tuple[str, int]:
    """`host:port` (`[::]:port` for IPv6) -> (host, port); a clear error otherwise."""
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"{name}={raw!r} is not host:port (for example 0.0.0.0:8443)")
    return host, int(port)


def webhook_app(receiver: WebhookReceiver, *, standby: Callable[[], bool] = lambda: False) -> web.Application:
    async def deliver(request: web.Request) -> web.Response:
        if standby():
            # Not the leader (README "High availability"): 503 makes MLflow retry, on a new
            # connection, which the Service may send to the leader; polling is the safety net.
            metrics.WEBHOOK_DELIVERIES.labels("standby").inc()
            return web.json_response(
                {"outcome": "standby"}, status=503, headers={"Retry-After": "1", "Connection": "close"}
            )
        body = await request.read()
        status, outcome = receiver.receive(request.headers, body)
        return web.json_response({"outcome": outcome.value}, status=status)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PATH, deliver)
    return app


def metrics_app() -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


class Listener:
    """One aiohttp site, started and stopped with the operator."""

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
