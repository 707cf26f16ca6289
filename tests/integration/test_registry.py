"""The registry client and the shared poller against a real MLflow server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow import MlflowClient

from aliasroll.backoff import Backoff
from aliasroll.errors import ModelNotFound, RegistryError, RegistryUnavailable
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller, poll_period
from aliasroll.registry.types import Endpoint
from mlflowserver import MlflowServer
from support.registry import quick_versions

pytestmark = pytest.mark.integration

GET_MODEL = "GET /api/2.0/mlflow/registered-models/get?"
SEARCH_MODELS = "/api/2.0/mlflow/registered-models/search"


def test_aliases_come_back_as_strings_in_one_call(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    quick_versions(registry, model_name, 3)
    registry.set_registered_model_alias(model_name, "production", "1")
    registry.set_registered_model_alias(model_name, "canary", "3")
    client = RegistryClient()
    before = mlflow_server.count_requests(GET_MODEL)

    aliases = client.model_aliases(Endpoint(mlflow_server.url), model_name)

    assert aliases == {"production": "1", "canary": "3"}
    assert mlflow_server.count_requests(GET_MODEL) - before == 1


def test_seed_workflow_version_details(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    """A model logged and registered the way MLflow's docs do it: READY, with its run and source."""
    from examples.sentiment.register import register_version

    version = register_version(mlflow_server.url, model_name, alias="production")
    info = RegistryClient().version(Endpoint(mlflow_server.url), model_name, version)

    assert info is not None
    assert (info.version, info.status, info.ready) == (version, "READY", True)
    assert info.run_id == registry.get_model_version(model_name, version).run_id
    assert info.source


def test_missing_model_alias_and_version(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    client = RegistryClient()
    endpoint = Endpoint(mlflow_server.url)
    with pytest.raises(ModelNotFound, match=f"no registered model '{model_name}'"):
        client.model_aliases(endpoint, model_name)
    quick_versions(registry, model_name, 1)
    assert client.model_aliases(endpoint, model_name) == {}
    assert client.version(endpoint, model_name, "42") is None


@pytest.fixture
def operator_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's registry timeouts (configure_http), undone after the test."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.mark.usefixtures("operator_http_settings")
def test_unreachable_registry_is_a_quick_clear_error() -> None:
    client = RegistryClient()
    started = time.monotonic()
    unreachable = r"registry at http://127\.0\.0\.1:9 did not answer: connection refused"
    with pytest.raises(RegistryUnavailable, match=unreachable):
        client.model_aliases(Endpoint("http://127.0.0.1:9"), "sentiment")
    assert time.monotonic() - started < 5, "no retries or long timeouts inside one poll"


class _NotMlflow(BaseHTTPRequestHandler):
    """Another web server where the registry should be: a 404 page, or a UI that answers 200 HTML
    on every path (the MLflow UI's own address behind a proxy, say)."""

    def do_GET(self) -> None:
        status = 200 if self.path.startswith("/spa/") else 404
        body = b"<!doctype html><html><body>not the REST API</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("operator_http_settings")
@pytest.mark.parametrize("path", ["", "/spa"], ids=["404 page", "200 html"])
def test_a_tracking_uri_that_is_not_mlflow_says_so(not_mlflow: str, path: str) -> None:
    with pytest.raises(RegistryError) as raised:
        RegistryClient().model_aliases(Endpoint(not_mlflow + path), "sentiment")
    assert type(raised.value) is RegistryError, "not worth a fast retry: the address is wrong"
    assert "is it an MLflow tracking server? check spec.registry.trackingUri" in raised.value.message
    assert "<html" not in raised.value.message, "the page itself is noise in a condition"


async def _subscribe_all(
    poller: RegistryPoller, endpoint: Endpoint, models: list[str], *, resources: int, interval: float
) -> Counter[str]:
    wakes: Counter[str] = Counter()

    async def one(index: int) -> None:
        model = models[index % len(models)]
        await poller.subscribe(
            subscriber=("ns", f"resource-{index}"),
            endpoint=endpoint,
            model=model,
            interval=interval,
            wake=lambda: wakes.update([model]),
        )

    await asyncio.gather(*(one(i) for i in range(resources)))
    return wakes


async def test_200_resources_over_20_models_cost_20_calls_a_poll(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    models = [f"{model_name}-{i}" for i in range(20)]
    for model in models:
        quick_versions(registry, model, 1)
        registry.set_registered_model_alias(model, "production", "1")
    interval = 2.0
    poller = RegistryPoller(RegistryClient(), sweep_threshold=25)
    endpoint = Endpoint(mlflow_server.url)
    try:
        start_count = mlflow_server.count_requests(GET_MODEL)
        await _subscribe_all(poller, endpoint, models, resources=200, interval=interval)
        first_poll = mlflow_server.count_requests(GET_MODEL) - start_count
        assert first_poll <= 20, f"{first_poll} get_registered_model calls for 200 resources"

        # Three more polls: each model is asked about once a poll, whoever follows it (a poll comes
        # a little more often than the interval, so its passes too end within the interval).
        counted_from = mlflow_server.count_requests(GET_MODEL)
        period = poll_period(interval)
        await asyncio.sleep(3 * period + period / 2)
        later = mlflow_server.count_requests(GET_MODEL) - counted_from
        assert later <= 3 * 20, f"{later} calls in 3 polls of 20 models"
        assert later >= 2 * 20, "the poller keeps polling"
    finally:
        await poller.close()


async def test_many_models_are_swept_in_one_search_call(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    models = [f"{model_name}-{i}" for i in range(30)]
    for model in models:
        quick_versions(registry, model, 2)
        registry.set_registered_model_alias(model, "production", "2")
    poller = RegistryPoller(RegistryClient(), sweep_threshold=25)
    try:
        gets, searches = mlflow_server.count_requests(GET_MODEL), mlflow_server.count_requests(SEARCH_MODELS)
        await _subscribe_all(poller, Endpoint(mlflow_server.url), models, resources=90, interval=60)
        assert mlflow_server.count_requests(GET_MODEL) == gets
        assert mlflow_server.count_requests(SEARCH_MODELS) - searches == 1
        snapshot = await poller.subscribe(
            subscriber="probe",
            endpoint=Endpoint(mlflow_server.url),
            model=models[7],
            interval=60,
            wake=lambda: None,
        )
        assert snapshot.aliases == {"production": "2"}
    finally:
        await poller.close()


async def test_an_alias_move_wakes_followers_within_the_interval(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    quick_versions(registry, model_name, 2)
    registry.set_registered_model_alias(model_name, "production", "1")
    poller = RegistryPoller(RegistryClient())
    woken = asyncio.Event()
    endpoint = Endpoint(mlflow_server.url)
    try:
        first = await poller.subscribe(
            subscriber="a", endpoint=endpoint, model=model_name, interval=0.5, wake=woken.set
        )
        assert first.aliases == {"production": "1"}
        woken.clear()
        registry.set_registered_model_alias(model_name, "production", "2")
        moved_at = time.monotonic()
        await asyncio.wait_for(woken.wait(), timeout=5)
        assert time.monotonic() - moved_at < 0.5 + 0.5
        again = await poller.subscribe(
            subscriber="a", endpoint=endpoint, model=model_name, interval=0.5, wake=woken.set
        )
        assert again.aliases == {"production": "2"}
    finally:
        await poller.close()


async def test_version_details_are_asked_once(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    quick_versions(registry, model_name, 1)
    poller = RegistryPoller(RegistryClient())
    endpoint = Endpoint(mlflow_server.url)
    try:
        # Cached while the model is followed (a pass subscribes before it asks about versions).
        await poller.subscribe(
            subscriber="resource", endpoint=endpoint, model=model_name, interval=30, wake=lambda: None
        )
        before = mlflow_server.count_requests("model-versions/get?")
        infos = await asyncio.gather(*(poller.version(endpoint, model_name, "1", ttl=30) for _ in range(50)))
        await poller.version(endpoint, model_name, "1", ttl=30)
        assert {info.status for info in infos if info} == {"READY"}
        assert mlflow_server.count_requests("model-versions/get?") - before == 1
    finally:
        await poller.close()


class SlowAnswers(RegistryClient):
    """A real client whose answers travel back slowly: a read reads the registry, then waits for
    `reads_go` before answering; a sweep takes `sweep_seconds` and finds `elsewhere` models more
    than the server has (a registry of many thousand models)."""

    def __init__(self, *, sweep_seconds: float = 0.0, elsewhere: int = 0) -> None:
        super().__init__()
        self.elsewhere = elsewhere
        self.reads_go = threading.Event()
        self.reads_go.set()
        self.read_done = threading.Event()  # a read has had the registry's answer
        self.reads = 0
        self.sweep_seconds = sweep_seconds

    def model_aliases(self, endpoint: Endpoint, model: str) -> dict[str, str]:
        answer = super().model_aliases(endpoint, model)
        self.reads += 1
        self.read_done.set()
        self.reads_go.wait(timeout=10)
        return answer

    def all_model_aliases(self, endpoint: Endpoint) -> dict[str, dict[str, str]]:
        time.sleep(self.sweep_seconds)
        found = super().all_model_aliases(endpoint)
        return found | {f"elsewhere-{n}": {} for n in range(self.elsewhere)}


async def test_a_push_while_the_model_is_read_is_read_again(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    """The read under way answered before the move: the push that came meanwhile reads once more,
    at once, instead of a pollInterval later."""
    quick_versions(registry, model_name, 2)
    registry.set_registered_model_alias(model_name, "production", "1")
    client = SlowAnswers()
    poller = RegistryPoller(client, batch_window=0.0)
    endpoint = Endpoint(mlflow_server.url)
    woken = asyncio.Event()
    try:
        first = await poller.subscribe(
            subscriber="a", endpoint=endpoint, model=model_name, interval=60.0, wake=woken.set
        )
        assert first.aliases == {"production": "1"}
        woken.clear()
        client.reads_go.clear()
        client.read_done.clear()
        poller.refresh(model_name)  # a read (a poll, a push) starts...
        assert await asyncio.to_thread(client.read_done.wait, 5)  # ...and has its answer: version 1
        registry.set_registered_model_alias(model_name, "production", "2")
        moved_at = time.time()
        poller.refresh(model_name, moved_at=moved_at)  # MLflow's webhook for the move
        client.reads_go.set()
        await asyncio.wait_for(woken.wait(), timeout=5)
        again = await poller.subscribe(
            subscriber="a", endpoint=endpoint, model=model_name, interval=60.0, wake=woken.set
        )
        assert again.aliases == {"production": "2"}
        assert poller.take_change("a") == moved_at
        assert client.reads == 3, "the first read, the one under way, then one more"
    finally:
        client.reads_go.set()
        await poller.close()


async def test_a_late_first_sweep_gives_way_to_direct_reads(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    """The first sweep of a registry too large to list within its deadline (half the answer
    timeout): the first followers are answered by direct reads in time, and once the sweep has
    answered (late: 10,000 models for 30 followed), the registry's models are read one by one."""
    models = [f"{model_name}-{i}" for i in range(30)]
    for model in models:
        quick_versions(registry, model, 1)
        registry.set_registered_model_alias(model, "production", "1")
    poller = RegistryPoller(
        SlowAnswers(sweep_seconds=4.0, elsewhere=10_000), sweep_threshold=25, answer_timeout=3.0
    )
    endpoint = Endpoint(mlflow_server.url)
    try:
        gets, searches = mlflow_server.count_requests(GET_MODEL), mlflow_server.count_requests(SEARCH_MODELS)
        snapshots = await asyncio.gather(
            *(
                poller.subscribe(
                    subscriber=model, endpoint=endpoint, model=model, interval=60, wake=lambda: None
                )
                for model in models
            )
        )
        # In time: a subscriber the poller could not answer within answer_timeout gets an error
        # snapshot without aliases (how long the reads took on a busy machine is not the point).
        assert [(snapshot.aliases, snapshot.error) for snapshot in snapshots] == [
            ({"production": "1"}, None)
        ] * 30
        assert mlflow_server.count_requests(GET_MODEL) - gets == 30
        # The sweep answers at last.
        deadline = time.monotonic() + 10
        while mlflow_server.count_requests(SEARCH_MODELS) == searches:
            assert time.monotonic() < deadline, "the sweep never reached the server"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        for model in models:
            poller.refresh(model)
        while mlflow_server.count_requests(GET_MODEL) - gets < 60:
            assert time.monotonic() < deadline, "the models are read one by one"
            await asyncio.sleep(0.05)
        assert mlflow_server.count_requests(SEARCH_MODELS) - searches == 1
    finally:
        await poller.close()


@pytest.mark.usefixtures("operator_http_settings")
async def test_registry_down_then_back(
    registry: MlflowClient, mlflow_server: MlflowServer, model_name: str
) -> None:
    """An outage becomes an error answer (with a wake), retried with backoff; recovery wakes again."""
    quick_versions(registry, model_name, 1)
    registry.set_registered_model_alias(model_name, "production", "1")
    poller = RegistryPoller(RegistryClient(), backoff=Backoff(cap=2))
    endpoint = Endpoint(mlflow_server.url)
    woken = asyncio.Event()

    async def current() -> tuple[object, object]:
        snapshot = await poller.subscribe(
            subscriber="r", endpoint=endpoint, model=model_name, interval=0.5, wake=woken.set
        )
        return snapshot.aliases, snapshot.error

    try:
        assert await current() == ({"production": "1"}, None)
        woken.clear()
        mlflow_server.stop()
        await asyncio.wait_for(woken.wait(), timeout=15)
        aliases, error = await current()
        assert aliases is None
        assert isinstance(error, RegistryUnavailable)
        woken.clear()
        await asyncio.to_thread(mlflow_server.start)
        await asyncio.wait_for(woken.wait(), timeout=20)
        assert await current() == ({"production": "1"}, None)
    finally:
        if not mlflow_server.is_running():
            mlflow_server.start()
        await poller.close()
