"""The HTTP side: a plain ASGI application (no framework: each layer costs per request).

Two listeners, told apart by the port a request arrived on:
- the serving port (PORT), the one the Services send clients to: MLflow's `POST /invocations`, and
  its health checks `GET /ping` and `/health`; nothing else (404). Every answer there names the
  model version that gave it (`X-Model-Version`), so a canary split can be measured from the client
  side; nothing else about the model (its name, its URI) is in the headers;
- the admin port (ADMIN_PORT), which no Service routes to, for the cluster: `GET /ready` (model
  loaded and warmed up, and not draining), `GET /live` (the kubelet's probes), `GET /metrics`
  (Prometheus, the operator's canary analysis), `GET /version` (MLflow's), `/ping` and `/health`.

At most `ALIASROLL_MAX_IN_FLIGHT` scoring requests are in flight at once (read, queued for a
predict call, or predicted); one more is answered 503 with `Retry-After` at once, before its body is
read, so neither the queue nor the bodies held in memory grow without bound under load.

Draining (server.py sets `draining` on SIGTERM): readiness turns 503 at once so the pod leaves the
Service's endpoints, while /invocations keeps scoring; every answer then carries `Connection: close`
so keep-alive clients reconnect, to another pod, before the listener closes.

Connection age: kube-proxy steers only new connections, so a client keeps reaching a version whose
pods left the Service's endpoints (kept warm for a rollback) for as long as it keeps its keep-alive
connection. On the serving port, an answer on a connection older than
`ALIASROLL_MAX_CONNECTION_AGE_SECONDS` (default 1 s; Envoy's max_connection_duration) carries
`Connection: close`: its client reconnects, and lands where the Service routes now. When a connection
was opened is told by the server's protocol (server.py), in the request's `scope["state"]`.

Shadow traffic: once a request's answer is sent, its predictions are counted (the version's
prediction distribution) and, with `ALIASROLL_SHADOW_URL`, a copy goes to the shadow (mirror.py). A
request marked `X-Aliasroll-Mirror` (with `ALIASROLL_MIRROR_TOKEN`'s value when one is set) is a copy:
answered as any other, counted apart from client traffic, never mirrored again.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from aliasroll.serving.batching import Batcher
from aliasroll.serving.config import ServingConfig
from aliasroll.serving.metrics import Metrics
from aliasroll.serving.mirror import Mirror
from aliasroll.serving.model import ModelLoadError, ServedModel
from aliasroll.serving.predictions import Unparseable, predictions_of
from aliasroll.serving.protocol import FailureKind, RequestError, decode
from aliasroll.serving.redaction import redact, secret_values
from aliasroll.serving.shadow_client import MIRROR_HEADER

log = logging.getLogger("aliasroll.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
# What a client told to come back later waits, in seconds (a predict call takes milliseconds).
RETRY_AFTER_SECONDS = b"1"
ADMIN_PATHS = frozenset({"/ready", "/live", "/metrics", "/version", "/ping", "/health"})
# The key of scope["state"] under which server.py's protocols give when the request's connection was
# opened (time.monotonic()); absent when the app runs under a server that does not say.
CONNECTION_OPENED = "aliasroll.connection_opened"
CLOSE = (b"connection", b"close")


class ClientGone(Exception):
    pass


class ServingApp:
    def __init__(self, config: ServingConfig, *, on_fatal: Callable[[str], None]) -> None:
        self.config = config
        self.metrics = Metrics(config)
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None
        self._on_fatal = on_fatal
        # Set from a signal handler: a plain attribute, read once per answer.
        self.draining = False
        self._loader: asyncio.Task[None] | None = None
        # On the serving port, only the version: what a client needs to tell a canary's answers
        # apart. The model's name and URI (registry paths) are for the cluster: /ready, /metrics.
        self._identity = [(b"x-model-version", config.model_version.encode())]
        self._max_connection_age = config.max_connection_age_seconds
        self.in_flight = 0
        # What marks a mirrored request, sent to the shadow and accepted from production.
        self._mirror_mark = (config.mirror_token or "1").encode()
        self.mirror: Mirror | None = None
        try:
            self._mlflow_version = importlib.metadata.version("mlflow-skinny").encode()
        except importlib.metadata.PackageNotFoundError:
            self._mlflow_version = importlib.metadata.version("mlflow").encode()

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        server = scope.get("server")
        if server is not None and server[1] == self.config.admin_port:
            await self._admin(scope, send)
            return
        path, method = scope["path"], scope["method"]
        if path == "/invocations":
            if method != "POST":
                await self._send(scope, send, 405, b'{"error_code":"BAD_REQUEST","message":"use POST"}')
                return
            await self._invocations(scope, receive, send)
        elif method not in ("GET", "HEAD"):
            await self._send(scope, send, 405, b"method not allowed\n", TEXT)
        elif path in ("/ping", "/health"):
            # MLflow's health check: healthy once the model is there.
            await self._send(scope, send, 200 if self.ready else 503, b"\n")
        else:
            await self._send(scope, send, 404, b"not found\n", TEXT)

    async def _admin(self, scope: Scope, send: Send) -> None:
        """The admin port: the cluster's endpoints, with no model headers (and no scoring)."""
        path, method = scope["path"], scope["method"]
        if path not in ADMIN_PATHS:
            await self._send(scope, send, 404, b"not found\n", TEXT, identity=False)
        elif method not in ("GET", "HEAD"):
            await self._send(scope, send, 405, b"method not allowed\n", TEXT, identity=False)
        elif path in ("/ping", "/health"):
            await self._send(scope, send, 200 if self.ready else 503, b"\n", identity=False)
        elif path == "/ready":
            body: dict[str, object] = {"ready": self.ready, "model": self.config.model_uri}
            if self.draining:
                body["draining"] = True
            await self._send(scope, send, 200 if self.ready else 503, orjson.dumps(body), identity=False)
        elif path == "/live":
            await self._send(scope, send, 200, b'{"live":true}', identity=False)
        elif path == "/version":
            await self._send(scope, send, 200, self._mlflow_version, identity=False)
        elif path == "/metrics":
            await self._send(
                scope,
                send,
                200,
                self.metrics.render(),
                b"text/plain; version=0.0.4; charset=utf-8",
                identity=False,
            )

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        mirrored = self._mirrored(scope)
        if self.in_flight >= self.config.max_in_flight:
            await self._refuse_overload(scope, send, mirrored)
            return
        self.in_flight += 1
        try:
            await self._score(scope, receive, send, mirrored)
        finally:
            self.in_flight -= 1

    def _mirrored(self, scope: Scope) -> bool:
        """Whether the request is production's copy (shadow traffic): marked with the mark it sends."""
        mark = _header(scope, MIRROR_HEADER)
        return mark is not None and hmac.compare_digest(mark.encode("latin-1"), self._mirror_mark)

    def _answered(self, scope: Scope, body: bytes, answer: bytes, mirrored: bool) -> None:
        """After the client has its answer: its predictions counted, and the copy for the shadow."""
        try:
            self.metrics.observe_predictions(predictions_of(answer), mirrored=mirrored)
            if self.mirror is not None and not mirrored:
                self.mirror.offer(body, _header(scope, b"content-type") or "application/json", answer)
        except Unparseable:
            pass
        except Exception:  # a bug of ours: the answer is sent, the request is not failed for it
            log.exception("counting the predictions of an answer failed")

    async def _refuse_overload(self, scope: Scope, send: Send, mirrored: bool = False) -> None:
        """503 with Retry-After, at once and without reading the body: what is queued stays bounded.
        Counted like any 503 (a canary that sheds load fails its clients)."""
        started = time.perf_counter()
        log.debug("invocations answered 503: %d requests in flight", self.in_flight)
        refused = RequestError(
            503,
            f"The server has {self.config.max_in_flight} requests in flight "
            "(ALIASROLL_MAX_IN_FLIGHT); retry shortly.",
            error_code="TEMPORARILY_UNAVAILABLE",
        )
        try:
            await self._send(scope, send, 503, refused.body(), retry_after=True)
        finally:
            self.metrics.observe(
                code=503,
                seconds=time.perf_counter() - started,
                cause="TEMPORARILY_UNAVAILABLE",
                kind="server",
                mirrored=mirrored,
            )

    async def _score(self, scope: Scope, receive: Receive, send: Send, mirrored: bool = False) -> None:
        started = time.perf_counter()
        status = 500  # counted if something escapes every handler below
        cause: str | None = "INTERNAL_ERROR"
        failure: FailureKind | None = "server"
        try:
            if self.batcher is None:
                raise RequestError(
                    503, "The model is still loading; retry shortly.", error_code="TEMPORARILY_UNAVAILABLE"
                )
            body = await self._read_body(scope, receive)
            request = decode(body, _header(scope, b"content-type"))
            try:
                async with asyncio.timeout(self.config.request_timeout_seconds):
                    answer = await self.batcher.score(request)
            except TimeoutError:
                raise RequestError(
                    504, "Request processing time exceeded limit", error_code="DEADLINE_EXCEEDED"
                ) from None
            await self._send(scope, send, 200, answer)
            status, cause, failure = 200, None, None
            self._answered(scope, body, answer, mirrored)
        except RequestError as error:
            status, cause, failure = error.status, error.error_code, error.kind
            # Logged without the payload (and without the message, which may quote the input).
            # 503 while loading is expected (probes, early clients); 5xx is ours; 4xx is the client's.
            if error.status == 503:
                level = logging.DEBUG
            else:
                level = logging.WARNING if error.status >= 500 else logging.INFO
            log.log(level, "invocations answered %d %s", error.status, error.error_code)
            await self._send(scope, send, error.status, error.body())
        except ClientGone:
            status, cause, failure = 499, "CLIENT_CLOSED", None
        except asyncio.CancelledError:
            # Only a drain that overran DRAIN_SECONDS cancels a request (uvicorn's
            # timeout_graceful_shutdown): the client gets a 503 it can retry elsewhere rather than
            # uvicorn's plain-text 500, and the request task, ours alone, ends here.
            status, cause, failure = 503, "TEMPORARILY_UNAVAILABLE", "server"
            log.warning("a request in flight was cancelled: the drain deadline passed (answered 503)")
            stopped = RequestError(
                503,
                "The server stopped before this request finished (DRAIN_SECONDS passed); retry it.",
                error_code="TEMPORARILY_UNAVAILABLE",
            )
            await self._send(scope, send, 503, stopped.body())
        except Exception:  # a bug of ours: still an answer in MLflow's shape, and counted
            log.exception("unexpected error while answering /invocations (answered 500)")
            status, cause, failure = 500, "INTERNAL_ERROR", "server"
            await self._send(scope, send, 500, RequestError(500, "internal error", error_code=cause).body())
        finally:
            self.metrics.observe(
                code=status,
                seconds=time.perf_counter() - started,
                cause=cause,
                kind=failure,
                mirrored=mirrored,
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send(
        self,
        scope: Scope,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        *,
        identity: bool = True,
        retry_after: bool = False,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if identity:
            headers.extend(self._identity)
        if retry_after:
            headers.append((b"retry-after", RETRY_AFTER_SECONDS))
        if self.draining:
            headers.append(CLOSE)
        elif identity and self._max_connection_age and self._aged(scope):
            # The serving port only: the admin port is no Service's, its scrapers stay where they are.
            headers.append(CLOSE)
            self.metrics.observe_aged_out()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _aged(self, scope: Scope) -> bool:
        """Whether the request's connection is older than ALIASROLL_MAX_CONNECTION_AGE_SECONDS (measured
        as its answer starts: a long request on a young connection still closes it, if it aged)."""
        opened = scope.get("state", {}).get(CONNECTION_OPENED)
        return opened is not None and time.monotonic() - opened >= self._max_connection_age

    # Lifecycle: the server listens at once (liveness), and turns ready once loaded and warmed up.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loader = asyncio.get_running_loop().create_task(self._load(), name="load model")
                self.start_mirror()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._loader is not None:
                    self._loader.cancel()
                if self.mirror is not None:
                    await self.mirror.close()
                if self.batcher is not None:
                    await self.batcher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start_mirror(self) -> None:
        """The shadow's mirror, with ALIASROLL_SHADOW_URL (in the loop: its workers are tasks)."""
        if self.config.shadow is not None and self.metrics.pairs is not None and self.mirror is None:
            self.mirror = Mirror(self.config.shadow, self.metrics.pairs, mark=self._mirror_mark)
            self.mirror.start()

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(ServedModel.load, self.config)
            warmed = await asyncio.to_thread(model.warm_up)
        except ModelLoadError as error:
            self._on_fatal(str(error))
            return
        except Exception as error:  # a warm-up that fails means the version cannot serve
            self._on_fatal(
                redact(
                    f"the warm-up prediction of {self.config.model_uri} failed: "
                    f"{type(error).__name__}: {error}",
                    secret_values(os.environ),
                )
            )
            return
        self.model = model
        self.batcher = Batcher(
            model,
            enabled=self.config.batching,
            max_batch_rows=self.config.max_batch_rows,
            threads=self.config.predict_threads,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.set_ready(not self.draining)
        log.info(
            "ready: %s in %.1f s (%s)",
            self.config.model_uri,
            time.monotonic() - started,
            "warmed up on the model's input example" if warmed else "no input example to warm up with",
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _too_large(limit: int) -> RequestError:
    return RequestError(
        413,
        f"The request body is larger than {limit} bytes (ALIASROLL_MAX_REQUEST_BYTES); "
        "send fewer rows per request.",
        error_code="REQUEST_LIMIT_EXCEEDED",
    )
