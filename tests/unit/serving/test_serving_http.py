"""The model server's HTTP surface, driven as uvicorn drives it (ASGI scopes), with a stand-in model:
what each port answers, which headers name the model, the bound on requests in flight, and the
maximum age of a keep-alive connection (through real listeners on loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aliasroll.serving.__main__ import listen
from aliasroll.serving.app import ServingApp
from aliasroll.serving.batching import Batcher
from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.mirror import Mirror
from aliasroll.serving.model import BatchOutcome, ServedModel
from aliasroll.serving.protocol import ParsedRequest
from aliasroll.serving.server import DrainingServer

PORT, ADMIN_PORT = 8080, 9090
ADMIN_PATHS = ("/metrics", "/version", "/ready", "/live")
BODY = b'{"inputs": ["a"]}'


class Answer:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = {key.decode().lower(): value.decode() for key, value in headers}
        self.body = body


class EchoModel:
    """Answers each request with its own first input; with a gate, every call waits for it."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self._gate = gate

    def answer_group(self, group: Sequence[ParsedRequest]) -> BatchOutcome:
        texts = [str(request.payload[0]) for request in group]
        self.calls.append(texts)
        self.entered.release()
        if self._gate is not None:
            assert self._gate.wait(10), "the test never opened the gate"
        return BatchOutcome([f'{{"predictions": ["{text}"]}}'.encode() for text in texts], calls=[len(group)])


def config(**env: str) -> ServingConfig:
    return ServingConfig.from_env({"MODEL_URI": "models:/sentiment/3", **env})


def app(**env: str) -> ServingApp:
    return ServingApp(config(**env), on_fatal=lambda message: None)


async def loaded(served: ServingApp, model: EchoModel, *, threads: int = 1) -> Batcher:
    served.batcher = Batcher(
        cast(ServedModel, model),
        enabled=served.config.batching,
        max_batch_rows=served.config.max_batch_rows,
        threads=threads,
        on_batch=served.metrics.observe_batch,
    )
    return served.batcher


async def call(
    served: ServingApp,
    path: str,
    *,
    port: int = PORT,
    method: str = "GET",
    body: bytes = b"",
    read: list[int] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> Answer:
    """One request through the app, as uvicorn hands it over from a listener on `port`."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "server": ("10.0.0.7", port),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if read is not None:
            read.append(len(body))
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await served(scope, receive, send)
    start, content = sent
    return Answer(start["status"], start["headers"], content["body"])


def counted(served: ServingApp, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(served.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# The admin port: what is for the cluster is not on the port the Services route to.


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_endpoints_answer_only_on_the_admin_port(path: str) -> None:
    served = app()
    await loaded(served, EchoModel())
    try:
        routed = await call(served, path)
        assert routed.status == 404
        assert b"sentiment" not in routed.body
        admin = await call(served, path, port=ADMIN_PORT)
        assert admin.status == 200
        assert not any(header.startswith("x-model") for header in admin.headers)
    finally:
        assert served.batcher is not None
        await served.batcher.close()


async def test_the_admin_port_serves_what_probes_and_scrapers_read() -> None:
    served = app()
    assert (await call(served, "/live", port=ADMIN_PORT)).status == 200
    assert (await call(served, "/ready", port=ADMIN_PORT)).status == 503  # still loading
    await loaded(served, EchoModel())
    try:
        ready = await call(served, "/ready", port=ADMIN_PORT)
        assert (ready.status, ready.body) == (200, b'{"ready":true,"model":"models:/sentiment/3"}')
        metrics = await call(served, "/metrics", port=ADMIN_PORT)
        assert b"aliasroll_serving_requests_total" in metrics.body
        # Scoring is the serving port's alone: the admin port holds no request in flight.
        assert (await call(served, "/invocations", port=ADMIN_PORT, method="POST", body=BODY)).status == 404
        # MLflow's health checks answer on both ports.
        for port in (PORT, ADMIN_PORT):
            assert (await call(served, "/ping", port=port)).status == 200
            assert (await call(served, "/health", port=port)).status == 200
    finally:
        assert served.batcher is not None
        await served.batcher.close()


async def test_answers_on_the_serving_port_name_the_version_and_nothing_else_of_the_model() -> None:
    served = app()
    await loaded(served, EchoModel())
    try:
        for answer in (
            await call(served, "/invocations", method="POST", body=BODY),
            await call(served, "/invocations", method="POST", body=b"not json"),
            await call(served, "/ping"),
            await call(served, "/nowhere"),
        ):
            assert answer.headers["x-model-version"] == "3"
            assert "x-model-name" not in answer.headers
            assert "x-model-uri" not in answer.headers
            assert b"models:/" not in answer.body
    finally:
        assert served.batcher is not None
        await served.batcher.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (8080, 9090, 64)),
        ({"PORT": "5000", "ADMIN_PORT": "5001", "ALIASROLL_MAX_IN_FLIGHT": "7"}, (5000, 5001, 7)),
        ({"PORT": "9090"}, "ADMIN_PORT=9090 must differ from PORT=9090"),
        ({"ADMIN_PORT": "8080"}, "ADMIN_PORT=8080 must differ from PORT=8080"),
        ({"ADMIN_PORT": "0"}, "ADMIN_PORT='0' must be between 1 and 65535"),
        ({"ALIASROLL_MAX_IN_FLIGHT": "0"}, "ALIASROLL_MAX_IN_FLIGHT='0' must be between 1 and 100000"),
    ],
)
def test_port_and_in_flight_settings(env: dict[str, str], expected: tuple[int, int, int] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            config(**env)
    else:
        got = config(**env)
        assert (got.port, got.admin_port, got.max_in_flight) == expected


async def test_both_ports_listen_in_one_server_and_each_answers_its_own() -> None:
    """Real listeners (uvicorn, httptools), as the entry point binds them."""
    sockets = [listen("127.0.0.1", 0), listen("127.0.0.1", 0)]
    port, admin_port = (sock.getsockname()[1] for sock in sockets)
    served = app(PORT=str(port), ADMIN_PORT=str(admin_port))
    await loaded(served, EchoModel())
    server = DrainingServer.for_app(served, lifespan="off", http="httptools", log_level="warning")
    running = asyncio.create_task(server.serve(sockets=sockets))
    try:
        for _ in range(500):  # uvicorn says it listens by a flag only
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started

        def get(port: int, path: str) -> tuple[int, str]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            return int(head.split()[1]), head.lower()

        routed_metrics, routed_head = await asyncio.to_thread(get, port, "/metrics")
        assert routed_metrics == 404
        assert "x-model-version: 3" in routed_head
        admin_metrics, _ = await asyncio.to_thread(get, admin_port, "/metrics")
        assert admin_metrics == 200
        assert (await asyncio.to_thread(get, admin_port, "/ready"))[0] == 200
        assert (await asyncio.to_thread(get, port, "/ready"))[0] == 404
    finally:
        server.should_exit = True
        await running
        assert served.batcher is not None
        await served.batcher.close()


# The bound on requests in flight.


async def test_past_the_bound_a_request_is_refused_at_once_with_retry_after_and_its_body_unread() -> None:
    gate = threading.Event()
    model = EchoModel(gate)
    served = app(ALIASROLL_MAX_IN_FLIGHT="3", ALIASROLL_BATCHING="off")
    await loaded(served, model, threads=1)
    try:
        held = [asyncio.create_task(call(served, "/invocations", method="POST", body=BODY)) for _ in range(3)]
        assert await asyncio.to_thread(model.entered.acquire, True, 5)  # one predicts, two queue
        await asyncio.sleep(0.01)
        assert served.in_flight == 3
        read: list[int] = []
        refused = await asyncio.wait_for(
            call(served, "/invocations", method="POST", body=BODY, read=read), timeout=1
        )
        assert refused.status == 503
        assert refused.headers["retry-after"] == "1"
        assert b"TEMPORARILY_UNAVAILABLE" in refused.body
        assert b"ALIASROLL_MAX_IN_FLIGHT" in refused.body
        assert read == []  # answered before the body was read
        assert served.in_flight == 3  # the refused request never counted
        # The admin port answers whatever the load: probes and scrapes are never refused.
        assert (await call(served, "/ready", port=ADMIN_PORT)).status == 200
        assert counted(served, "aliasroll_serving_requests_total", code="503") == 1
        gate.set()
        assert [answer.status for answer in await asyncio.gather(*held)] == [200, 200, 200]
        assert served.in_flight == 0
        # Room again: the next request is scored.
        assert (await call(served, "/invocations", method="POST", body=BODY)).status == 200
    finally:
        gate.set()
        assert served.batcher is not None
        await served.batcher.close()


async def test_a_request_that_fails_or_whose_client_leaves_frees_its_place() -> None:
    served = app(ALIASROLL_MAX_IN_FLIGHT="1")
    await loaded(served, EchoModel())
    try:
        for _ in range(3):
            assert (await call(served, "/invocations", method="POST", body=b"{")).status == 400
        assert served.in_flight == 0
        assert (await call(served, "/invocations", method="POST", body=BODY)).status == 200
        assert served.in_flight == 0
    finally:
        assert served.batcher is not None
        await served.batcher.close()


async def test_requests_in_flight_under_the_bound_still_share_predict_calls() -> None:
    """The bound caps the queue the batcher takes its batches from; it does not split them."""
    gate = threading.Event()
    model = EchoModel(gate)
    served = app(ALIASROLL_MAX_IN_FLIGHT="9")
    await loaded(served, model, threads=1)
    try:
        first = asyncio.create_task(call(served, "/invocations", method="POST", body=BODY))
        assert await asyncio.to_thread(model.entered.acquire, True, 5)
        rest = [
            asyncio.create_task(
                call(served, "/invocations", method="POST", body=f'{{"inputs": ["q{index}"]}}'.encode())
            )
            for index in range(8)
        ]
        await asyncio.sleep(0.01)
        assert served.in_flight == 9
        gate.set()
        answers = [await first, *await asyncio.gather(*rest)]
        assert [answer.status for answer in answers] == [200] * 9
        assert model.calls == [["a"], [f"q{index}" for index in range(8)]]
    finally:
        gate.set()
        assert served.batcher is not None
        await served.batcher.close()


# The maximum age of a connection: clients reconnect, so they land where the Service routes now.


@asynccontextmanager
async def listening(http: str = "httptools", **env: str) -> AsyncIterator[tuple[ServingApp, int, int]]:
    """The server on two loopback ports, as the entry point runs it (uvicorn, a stand-in model)."""
    sockets = [listen("127.0.0.1", 0), listen("127.0.0.1", 0)]
    port, admin_port = (sock.getsockname()[1] for sock in sockets)
    served = app(PORT=str(port), ADMIN_PORT=str(admin_port), **env)
    await loaded(served, EchoModel())
    server = DrainingServer.for_app(served, lifespan="off", http=http, log_level="warning")
    running = asyncio.create_task(server.serve(sockets=sockets))
    try:
        for _ in range(500):  # uvicorn says it listens by a flag only
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield served, port, admin_port
    finally:
        server.should_exit = True
        await running
        assert served.batcher is not None
        await served.batcher.close()


class Connection:
    """One keep-alive TCP connection, requests sent one after the other on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, path: str = "/invocations") -> Answer:
        if path == "/invocations":
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            self.writer.write(f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
        else:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [(name.encode(), value.encode()) for name, value in (line.split(": ", 1) for line in lines)]
        answer = Answer(int(status_line.split()[1]), headers, b"")
        length = int(answer.headers["content-length"])
        answer.body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return answer

    async def closed_by_server(self) -> bool:
        """Whether the server closed its side: end of stream, with nothing more sent."""
        return await asyncio.wait_for(self.reader.read(1), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_a_connection_older_than_the_max_age_is_closed_after_its_answer(http: str) -> None:
    async with listening(http) as (served, port, _):  # the default age: 1 s
        assert served.config.max_connection_age_seconds == 1.0
        conn = await Connection.open(port)
        try:
            # A young connection keeps alive, request after request.
            for path in ("/invocations", "/ping", "/invocations"):
                young = await conn.request(path)
                assert young.status == 200
                assert "connection" not in young.headers
            # Requests back to back: the first answer once the connection is past the age says close
            # (and is whole), and the server closes the socket after it.
            sent = 0
            while True:
                answer = await conn.request()
                sent += 1
                assert (answer.status, answer.body) == (200, b'{"predictions": ["a"]}')
                if answer.headers.get("connection") == "close":
                    break
                assert time.monotonic() - conn.opened < 10, "never told to close"
            # The server opened its side after the client began to connect, and measured as the answer
            # started: the client, which got it later, counts at least as much.
            assert time.monotonic() - conn.opened >= 1.0
            assert sent > 1
            assert await conn.closed_by_server()
        finally:
            await conn.close()
        assert counted(served, "aliasroll_serving_connections_aged_out_total") == 1
        # The client reconnects, and the new connection is young again.
        again = await Connection.open(port)
        try:
            assert "connection" not in (await again.request()).headers
        finally:
            await again.close()


async def test_an_idle_connection_past_the_age_gets_close_on_its_next_answer() -> None:
    async with listening(ALIASROLL_MAX_CONNECTION_AGE_SECONDS="0.5") as (served, port, admin_port):
        assert counted(served, "aliasroll_serving_connections_aged_out_total") == 0  # exported from the start
        conn, admin = await Connection.open(port), await Connection.open(admin_port)
        try:
            assert "connection" not in (await conn.request("/ping")).headers
            assert "connection" not in (await admin.request("/metrics")).headers
            await asyncio.sleep(0.6)
            # Any answer on the serving port, the health checks' too.
            assert (await conn.request("/ping")).headers["connection"] == "close"
            assert await conn.closed_by_server()
            # The admin port is no Service's: its scrapers and probes keep their connections.
            for _ in range(2):
                assert "connection" not in (await admin.request("/metrics")).headers
        finally:
            await conn.close()
            await admin.close()
        assert counted(served, "aliasroll_serving_connections_aged_out_total") == 1


async def test_a_max_age_of_0_never_closes_a_connection_for_its_age() -> None:
    async with listening(ALIASROLL_MAX_CONNECTION_AGE_SECONDS="0") as (served, port, _):
        conn = await Connection.open(port)
        try:
            for pause in (0.0, 0.15, 0.15):
                await asyncio.sleep(pause)
                answer = await conn.request()
                assert answer.status == 200
                assert "connection" not in answer.headers
        finally:
            await conn.close()
        assert counted(served, "aliasroll_serving_connections_aged_out_total") == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 1.0),
        ("", 1.0),
        ("0", 0.0),
        ("0.25", 0.25),
        ("30", 30.0),
        ("-1", "ALIASROLL_MAX_CONNECTION_AGE_SECONDS='-1' must be between 0 and 86400 seconds"),
        ("86401", "must be between 0 and 86400 seconds \\(0: connections are never closed"),
        ("nan", "'nan' must be between 0 and 86400"),
        ("inf", "'inf' must be between 0 and 86400"),
        ("1s", "ALIASROLL_MAX_CONNECTION_AGE_SECONDS='1s' is not a number of seconds"),
    ],
)
def test_the_max_connection_age_setting(raw: str | None, expected: float | str) -> None:
    env = {} if raw is None else {"ALIASROLL_MAX_CONNECTION_AGE_SECONDS": raw}
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            config(**env)
    else:
        assert config(**env).max_connection_age_seconds == expected


def test_the_server_runs_only_on_a_protocol_that_tells_connection_age() -> None:
    with pytest.raises(ValueError, match="http='auto': the model server runs on httptools or h11"):
        DrainingServer.for_app(app(), http="auto")


# Shadow traffic: the copies a shadow answers count apart; production mirrors after its answer.

MIRROR = (b"x-aliasroll-mirror", b"1")
TOKEN = "t0ken-of-the-resource"


async def test_a_mirrored_request_is_answered_and_counted_apart_from_client_traffic() -> None:
    served = app()
    await loaded(served, EchoModel())
    answer = await call(served, "/invocations", method="POST", body=BODY, headers=[MIRROR])
    assert (answer.status, answer.body) == (200, b'{"predictions": ["a"]}')
    assert counted(served, "aliasroll_serving_requests_total", code="200") == 0
    assert counted(served, "aliasroll_serving_request_duration_seconds_count") == 0
    assert counted(served, "aliasroll_serving_mirrored_requests_total", code="200") == 1
    assert counted(served, "aliasroll_serving_mirrored_request_duration_seconds_count") == 1
    assert counted(served, "aliasroll_serving_predictions_total", mirrored="true", **{"class": "a"}) == 1
    await call(served, "/invocations", method="POST", body=b'{"inputs": ["b"]}')
    assert counted(served, "aliasroll_serving_requests_total", code="200") == 1
    assert counted(served, "aliasroll_serving_predictions_total", mirrored="false", **{"class": "b"}) == 1
    # A mirrored request that fails counts apart too.
    await call(served, "/invocations", method="POST", body=b"{", headers=[MIRROR])
    assert counted(served, "aliasroll_serving_mirrored_requests_total", code="400") == 1
    assert counted(served, "aliasroll_serving_requests_total", code="400") == 0


async def test_with_a_token_only_its_value_marks_a_copy() -> None:
    served = app(ALIASROLL_MIRROR_TOKEN=TOKEN)
    await loaded(served, EchoModel())
    for mark in (b"1", b"t0ken-of-the-resourcE", b""):  # a client's guess is client traffic
        await call(served, "/invocations", method="POST", body=BODY, headers=[(MIRROR[0], mark)])
    assert counted(served, "aliasroll_serving_requests_total", code="200") == 3
    await call(served, "/invocations", method="POST", body=BODY, headers=[(MIRROR[0], TOKEN.encode())])
    assert counted(served, "aliasroll_serving_mirrored_requests_total", code="200") == 1
    assert counted(served, "aliasroll_serving_requests_total", code="200") == 3


def test_a_server_without_a_shadow_exports_no_pairs() -> None:
    assert b"aliasroll_serving_shadow_pairs" not in app().metrics.render()
    shadowing = app(ALIASROLL_SHADOW_URL="http://shadow:8080").metrics.render().decode()
    for outcome in ("agree", "disagree", "shadow_error", "timeout", "dropped"):
        assert f'outcome="{outcome}"' in shadowing


async def test_production_mirrors_a_copy_once_its_client_has_the_answer() -> None:
    served = app(ALIASROLL_SHADOW_URL="http://shadow:8080", ALIASROLL_MAX_IN_FLIGHT="1")
    await loaded(served, EchoModel())
    gate = asyncio.Event()
    copies: list[tuple[bytes, str, bytes]] = []

    async def shadow(config: Any, body: bytes, *, content_type: str, mark: bytes) -> tuple[int, bytes]:
        copies.append((body, content_type, mark))
        await gate.wait()
        return 200, b'{"predictions": ["a"]}'

    assert served.config.shadow is not None
    assert served.metrics.pairs is not None
    served.mirror = Mirror(served.config.shadow, served.metrics.pairs, mark=b"1", send=shadow)
    served.mirror.start()
    try:
        # The shadow has not answered: the clients have theirs, and the copies hold no place in flight.
        for _ in range(2):
            answer = await call(served, "/invocations", method="POST", body=BODY)
            assert (answer.status, answer.body) == (200, b'{"predictions": ["a"]}')
        await call(served, "/invocations", method="POST", body=b"{")  # a 400: nothing to compare
        await call(served, "/invocations", method="POST", body=BODY, headers=[MIRROR])  # a copy itself
        await asyncio.sleep(0.01)
        assert copies == [(BODY, "application/json", b"1")] * 2
        gate.set()
        for _ in range(100):
            if counted(served, "aliasroll_serving_shadow_pairs_total", outcome="agree") == 2:
                break
            await asyncio.sleep(0.01)
        assert counted(served, "aliasroll_serving_shadow_pairs_total", outcome="agree") == 2
    finally:
        await served.mirror.close()
