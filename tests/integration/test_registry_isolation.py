"""Registries are tenants: one that accepts connections and never answers (a black-holed trackingUri)
holds only its own threads, while a real MLflow server next to it keeps answering at once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from aliasroll.errors import RegistryUnavailable
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller
from aliasroll.registry.types import Endpoint
from mlflowserver import MlflowServer
from support.registry import quick_versions

pytestmark = pytest.mark.integration

PER_REGISTRY = 4


class BlackHole:
    """Accepts TCP connections and never answers; closing it resets every connection it holds."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._held.append(connection)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture
def patient_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long request timeout, so a call to the black hole stays blocked for the whole test: only the
    poller's own limits can keep the other registry and the followers answered."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.mark.usefixtures("patient_http")
async def test_a_black_holed_registry_does_not_starve_a_real_one(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str, black_hole: BlackHole
) -> None:
    quick_versions(registry, model_name, 1)
    registry.set_registered_model_alias(model_name, "production", "1")
    poller = RegistryPoller(RegistryClient(), concurrency_per_registry=PER_REGISTRY, answer_timeout=2)
    silent = Endpoint(black_hole.url)
    try:
        # Three times more silent models than the black hole gets threads, asked for first.
        silent_answers = [
            asyncio.create_task(
                poller.subscribe(
                    subscriber=f"tenant-b/{index}",
                    endpoint=silent,
                    model=f"model-{index}",
                    interval=30,
                    wake=lambda: None,
                )
            )
            for index in range(3 * PER_REGISTRY)
        ]
        deadline = time.monotonic() + 10
        while black_hole.connections < PER_REGISTRY:
            assert time.monotonic() < deadline, "the black hole was never called"
            await asyncio.sleep(0.02)

        answer = await asyncio.wait_for(
            poller.subscribe(
                subscriber="tenant-a",
                endpoint=Endpoint(mlflow_server.url),
                model=model_name,
                interval=30,
                wake=lambda: None,
            ),
            timeout=20,  # the black hole's calls stay blocked for 60 s: far more than this
        )
        assert answer.error is None
        assert answer.aliases == {"production": "1"}

        for snapshot in await asyncio.wait_for(asyncio.gather(*silent_answers), timeout=20):
            assert snapshot.aliases is None
            assert isinstance(snapshot.error, RegistryUnavailable)
            assert f"the registry at {black_hole.url} did not answer in time" in snapshot.error.message
        assert black_hole.connections <= PER_REGISTRY, "one registry holds only its own threads"
    finally:
        await poller.close()
