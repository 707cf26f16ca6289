"""A trackingUri is any URL a tenant writes, so the registry client meets servers that are not MLflow
and mean harm: one that drips its answer a byte at a time (each read well within the timeout), one
that streams without end, one that never answers, one whose errors carry what it wants shown in
another namespace's status, one that redirects elsewhere. Each call ends by its deadline, holds at
most the answer budget, reports in the operator's own words, and goes only where the allow-list
lets it (checked again by address when the connection is made). All on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from mlflow import MlflowClient

from aliasroll.egress import Destinations
from aliasroll.errors import (
    DestinationRefused,
    RegistryAnswerTooLarge,
    RegistryError,
    RegistryUnavailable,
)
from aliasroll.registry import transport
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.types import Credentials, Endpoint
from mlflowserver import MlflowServer
from support.registry import quick_versions

pytestmark = pytest.mark.integration

SECRETS = ("hunter2", "10.0.3.7", "internal admin API", "SECRET-CODE", "<html")
Behaviour = Callable[[socket.socket, bytes], None]


@dataclass
class HostileServer:
    """Accepts connections on 127.0.0.1 and answers every request with `behaviour`; records what it
    saw. Closing it resets what it still holds."""

    behaviour: Behaviour
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    sent: int = 0
    peer_closed: threading.Event = field(default_factory=threading.Event)
    closing: threading.Event = field(default_factory=threading.Event)
    held: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener.settimeout(0.1)
        threading.Thread(target=self._accept, name="hostile", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request)
            self.behaviour(conn, request)

    def send(self, conn: socket.socket, data: bytes) -> None:
        """Sends, and notices when the client hung up (then stops sending)."""
        if self.closing.is_set():
            raise OSError("closing")
        try:
            conn.sendall(data)
        except OSError:
            self.peer_closed.set()
            raise
        self.sent += len(data)

    def wait_for_hang_up(self, conn: socket.socket, limit: float) -> None:
        conn.settimeout(limit)
        with contextlib.suppress(OSError):
            if conn.recv(1) == b"":
                self.peer_closed.set()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def hostile(behaviour: Callable[[HostileServer, socket.socket, bytes], None]) -> Iterator[HostileServer]:
    server = HostileServer(behaviour=lambda conn, request: behaviour(server, conn, request))
    try:
        yield server
    finally:
        server.close()


def head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def answer(status: str, body: bytes, content_type: str = "application/json") -> Callable[..., None]:
    def behaviour(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.send(conn, head(status, {"Content-Type": content_type, "Content-Length": str(len(body))}))
        server.send(conn, body)
        server.wait_for_hang_up(conn, 5)

    return behaviour


def client(timeout: float = 2.0, **kwargs: object) -> RegistryClient:
    return RegistryClient(timeout_seconds=timeout, **kwargs)  # type: ignore[arg-type]


def no_secret_in(message: str) -> None:
    for secret in SECRETS:
        assert secret not in message, f"{secret!r} from the remote reached the message: {message}"


def test_a_dripped_answer_ends_at_the_deadline_not_when_the_server_stops() -> None:
    # One byte every 0.2 s: each read is far within the 2 s timeout, so a per-read timeout (requests',
    # MLflow's) waits for all of it (60 s here).
    def drip(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.send(
            conn, head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        )
        server.send(conn, chunk(b'{"registered_model": {"name": "m", "description": "'))
        for _ in range(300):
            server.send(conn, chunk(b"x"))
            time.sleep(0.2)

    with hostile(drip) as server:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as raised:
            client(timeout=2).model_aliases(Endpoint(server.url), "m")
        took = time.monotonic() - started
        assert raised.value.message == (
            f"the registry at {server.url} did not answer within 2 s (ALIASROLL_REGISTRY_TIMEOUT)"
        )
        assert took < 3.5, f"the call lasted {took:.1f} s with a 2 s deadline"
        assert server.peer_closed.wait(5), "the connection was cut, not left to the server"


def test_dripped_headers_and_a_dripped_write_end_at_the_deadline_too() -> None:
    def drip_headers(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\n")
        for _ in range(300):
            server.send(conn, b"X")
            time.sleep(0.2)

    with hostile(drip_headers) as server:
        endpoint = Endpoint(server.url, Credentials(token="t"))
        for call in (
            lambda registry: registry.model_aliases(endpoint, "m"),
            lambda registry: registry.set_version_tags(endpoint, "m", "1", {"k": "v"}),
            lambda registry: registry.set_alias(endpoint, "m", "production", "1"),
        ):
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable, match=r"did not answer within 1\.5 s"):
                call(client(timeout=1.5))
            assert time.monotonic() - started < 3.0
        assert any(request.startswith(b"POST ") for request in server.requests)


def test_a_silent_registry_releases_the_thread_at_the_deadline() -> None:
    def silent(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.wait_for_hang_up(conn, 60)  # never answers; notices the hang-up

    with hostile(silent) as server:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="did not answer within 1 s"):
            client(timeout=1).model_aliases(Endpoint(server.url), "m")
        assert time.monotonic() - started < 2.5
        assert server.peer_closed.wait(5)


def test_a_socket_timeout_at_the_deadline_is_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a busy machine the socket's own timer (as long as the deadline) can fire before the
    # watchdog thread runs: the call still did not answer within its deadline, and says so.
    def silent(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.wait_for_hang_up(conn, 60)

    monkeypatch.setattr(transport._WATCHDOG, "watch", lambda call: None)  # the watchdog never runs
    with hostile(silent) as server, pytest.raises(RegistryUnavailable, match="did not answer within 1 s"):
        client(timeout=1).model_aliases(Endpoint(server.url), "m")


@pytest.mark.parametrize("announced", [False, True], ids=["streamed", "content-length"])
def test_a_30_mb_answer_is_cut_at_the_budget_without_being_held(announced: bool) -> None:
    body_size = 30 * 1024 * 1024
    piece = b" " * (1 << 20)

    def flood(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        length = {"Content-Length": str(body_size + 2)} if announced else {"Transfer-Encoding": "chunked"}
        server.send(conn, head("200 OK", {"Content-Type": "application/json", **length}))
        server.send(conn, b"{" if announced else chunk(b"{"))
        for _ in range(30):
            server.send(conn, piece if announced else chunk(piece))
        server.send(conn, b"}" if announced else chunk(b"}") + b"0\r\n\r\n")

    with hostile(flood) as server:
        registry = client(timeout=10, max_answer_bytes=2 * 1024 * 1024)
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(RegistryAnswerTooLarge) as raised:
                registry.model_aliases(Endpoint(server.url), "m")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert raised.value.message == (
            f"the registry at {server.url} answered more than 2 MiB for registered model 'm' "
            "(ALIASROLL_REGISTRY_MAX_ANSWER_BYTES)"
        )
        assert raised.value.reason == "RegistryRejected"
        assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.0f} MiB held for a 2 MiB budget"
        assert time.monotonic() - started < 5
        assert server.peer_closed.wait(5), "the rest of the answer was not read"
        assert server.sent < 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected", "words"),
    [
        (
            "500 Internal Server Error",
            {"error_code": "INTERNAL_ERROR", "message": "db password hunter2 rotated; primary=10.0.3.7"},
            "application/json",
            RegistryUnavailable,
            "failed (HTTP 500, INTERNAL_ERROR)",
        ),
        (
            "400 Bad Request",
            {"error": "internal admin API: secret-ish detail 42", "hint": "hunter2"},
            "application/json",
            RegistryError,
            "rejected the request for registered model 'm' (HTTP 400)",
        ),
        (
            "400 Bad Request",
            {"error_code": "INVALID_PARAMETER_VALUE", "message": "hunter2 is not a model name"},
            "application/json",
            RegistryError,
            "rejected the request for registered model 'm' (HTTP 400, INVALID_PARAMETER_VALUE)",
        ),
        (
            "503 Service Unavailable",
            {"error_code": "SECRET-CODE hunter2", "message": "x"},
            "application/json",
            RegistryUnavailable,
            "failed (HTTP 503)",
        ),
        (
            "502 Bad Gateway",
            "<html><body>upstream 10.0.3.7 said hunter2</body></html>",
            "text/html",
            RegistryUnavailable,
            "failed (HTTP 502)",
        ),
        (
            "404 Not Found",
            "<html>internal admin API hunter2</html>",
            "text/html",
            RegistryError,
            "gave HTTP 404 with a non-MLflow answer on the MLflow REST API",
        ),
        (
            "200 OK",
            "hunter2 at 10.0.3.7",
            "text/plain",
            RegistryError,
            "gave an answer that is not JSON on the MLflow REST API",
        ),
        (
            "200 OK",
            {"registered_model": {"name": {"hunter2": "10.0.3.7"}, "aliases": "SECRET-CODE"}},
            "application/json",
            RegistryError,
            "gave an answer that MLflow's client cannot read on the MLflow REST API",
        ),
    ],
    ids=[
        "json 500",
        "json without code",
        "json 400",
        "unknown code",
        "html 502",
        "html 404",
        "text 200",
        "wrong types",
    ],
)
def test_what_a_registry_says_never_reaches_the_message(
    status: str, body: object, content_type: str, expected: type[RegistryError], words: str
) -> None:
    data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
    with hostile(answer(status, data, content_type)) as server:
        with pytest.raises(RegistryError) as raised:
            client().model_aliases(Endpoint(server.url), "m")
        assert type(raised.value) is expected
        assert words in raised.value.message
        no_secret_in(raised.value.message)


def test_a_redirect_is_not_followed() -> None:
    def elsewhere(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.send(conn, head("200 OK", {"Content-Type": "application/json", "Content-Length": "2"}))
        server.send(conn, b"{}")

    with hostile(elsewhere) as target:
        location = f"{target.url}/latest/meta-data/iam/security-credentials/"
        redirect = head("302 Found", {"Location": location, "Content-Length": "0"})

        def redirecting(server: HostileServer, conn: socket.socket, request: bytes) -> None:
            server.send(conn, redirect)
            server.wait_for_hang_up(conn, 5)

        with hostile(redirecting) as server:
            with pytest.raises(RegistryError) as raised:
                client().model_aliases(Endpoint(server.url, Credentials(token="tenant-token")), "m")
            assert "answered with a redirect (HTTP 302), which the operator does not follow" in (
                raised.value.message
            )
            assert target.url not in raised.value.message
        assert target.connections == 0


def test_a_refused_destination_is_never_connected_to() -> None:
    with hostile(answer("200 OK", b"{}")) as server:
        port = server.listener.getsockname()[1]
        default = client(destinations=Destinations.from_env({}))
        with pytest.raises(DestinationRefused) as raised:
            default.model_aliases(Endpoint(server.url), "m")
        assert raised.value.reason == "DestinationRefused"
        assert raised.value.message.startswith(
            f"the registry at {server.url} is not called: 127.0.0.1 is a loopback address"
        )
        # A name the list allows, which resolves to an address it refuses: caught when connecting.
        by_name = client(destinations=Destinations.parse("localhost"))
        with pytest.raises(DestinationRefused, match=r"localhost \(127\.0\.0\.1\) is a loopback address"):
            by_name.model_aliases(Endpoint(f"http://localhost:{port}"), "m")
        assert server.connections == 0
        # A query or fragment in the URL (the spec refuses it too) is never sent, allow-list or not.
        with pytest.raises(DestinationRefused, match="no query"):
            client().model_aliases(Endpoint(f"{server.url}/internal/admin?x="), "m")
        assert server.connections == 0


def test_an_allowed_registry_answers_through_the_allow_list(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    quick_versions(registry, model_name, 2)
    registry.set_registered_model_alias(model_name, "production", "2")
    local = client(destinations=Destinations.from_env({"ALIASROLL_ALLOWED_DESTINATIONS": "*,127.0.0.0/8"}))
    endpoint = Endpoint(mlflow_server.url)
    assert local.model_aliases(endpoint, model_name) == {"production": "2"}
    info = local.version(endpoint, model_name, "2")
    assert info is not None
    assert info.ready
    local.set_version_tags(endpoint, model_name, "2", {"aliasroll.io/test": "yes"})
    assert local.all_model_aliases(endpoint)[model_name] == {"production": "2"}


def test_calls_to_one_registry_together_hold_at_most_two_answers_worth() -> None:
    """Eight calls at once to a registry that streams without end: each may hold one answer's budget,
    but together they hold at most two answers' worth; the calls past that stop and are retried
    (RegistryUnavailable), never letting the operator's memory grow with the calls a tenant causes."""
    piece = b" " * (64 * 1024)

    def endless(server: HostileServer, conn: socket.socket, request: bytes) -> None:
        server.send(
            conn, head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        )
        server.send(conn, chunk(b"{"))
        with contextlib.suppress(OSError):
            while True:
                server.send(conn, chunk(piece))
                time.sleep(0.01)

    budget = 1024 * 1024
    with hostile(endless) as server:
        registry = client(timeout=4, max_answer_bytes=budget)
        in_flight = registry._http.in_flight
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, in_flight.held)
                time.sleep(0.005)

        errors: list[RegistryError] = []

        def call(i: int) -> None:
            try:
                registry.model_aliases(Endpoint(server.url), f"m{i}")
            except RegistryError as error:
                errors.append(error)

        watcher = threading.Thread(target=watch)
        watcher.start()
        calls = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for thread in calls:
            thread.start()
        for thread in calls:
            thread.join(10)
        done.set()
        watcher.join()
        assert len(errors) == 8
        assert peak <= 2 * budget, f"{peak / 2**20:.1f} MiB held at once for one registry"
        assert in_flight.held == 0, "every call gave its bytes back"
        kinds = {type(error) for error in errors}
        assert RegistryUnavailable in kinds, "no call was stopped by the registry's shared budget"
        busy = [e.message for e in errors if isinstance(e, RegistryUnavailable)]
        assert all("was not read: the operator holds as much" in m for m in busy), busy
