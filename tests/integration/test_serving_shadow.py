"""Shadow traffic between two real model servers, each started as the image starts it, on two versions
of a real registered model that disagree on known inputs (tests/integration/models/mirror_threshold_model.py,
thresholds 0.5 and 0.7).

Production mirrors every answered request to the shadow and compares: the pairs are counted exactly
(agree/disagree on the known inputs), the shadow counts the copies apart from client traffic, and the
client's answer is never held by the shadow: a shadow that sleeps 5 s leaves clients answered at
production's pace (its copies counted `timeout`, and `dropped` once the queue is full), a shadow that
floods bytes is cut at the byte budget, and one that is gone costs clients nothing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlflowserver import MlflowServer, free_port
from support.served import ServedProcess

THRESHOLD_MODEL = Path(__file__).parent / "models" / "mirror_threshold_model.py"
TOKEN = "mirror-token-0f3c9a"
OUTCOMES = ("agree", "disagree", "shadow_error", "timeout", "dropped")
# x = 0.00, 0.05, ..., 0.95: production (0.5) and the shadow (0.7) disagree on 0.50 to 0.65.
INPUTS = [i / 20 for i in range(20)]
DISAGREEING = [x for x in INPUTS if 0.5 <= x < 0.7]


@pytest.fixture(scope="module")
def versions(mlflow_server: MlflowServer) -> tuple[str, str]:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(mlflow_server.url)
    uris = []
    for threshold in (0.5, 0.7):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(THRESHOLD_MODEL),
                model_config={"threshold": threshold},
                signature=infer_signature(pd.DataFrame({"x": [0.1]}), [1]),
                input_example={"x": [0.1]},
                pip_requirements=["mlflow-skinny", "pandas"],
                registered_model_name="shadowed",
            )
        uris.append(f"models:/shadowed/{info.registered_model_version}")
    return uris[0], uris[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shadowed")


@pytest.fixture(scope="module")
def serve(mlflow_server: MlflowServer, workdir: Path) -> Iterator[object]:
    """Starts servers (all at once, then waits for each), stopped at the module's end."""
    started: list[ServedProcess] = []

    def start(*specs: tuple[str, dict[str, str]]) -> list[ServedProcess]:
        servers = [
            ServedProcess(model_uri=uri, tracking_uri=mlflow_server.url, workdir=workdir, env=env).start()
            for uri, env in specs
        ]
        started.extend(servers)
        for server in servers:
            server.wait_until("/ready")
        return servers

    yield start
    for server in started:
        server.stop()


def mirroring_to(url: str, **settings: str) -> dict[str, str]:
    return {
        "ALIASROLL_SHADOW_URL": url,
        "ALIASROLL_SHADOW_PERCENT": "100",
        "ALIASROLL_SHADOW_TOLERANCE": "0.01",
        "ALIASROLL_MIRROR_TOKEN": TOKEN,
        "ALIASROLL_TRACK": "production",
        **settings,
    }


def metric(server: ServedProcess, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def pairs(server: ServedProcess) -> dict[str, float]:
    return {o: metric(server, "aliasroll_serving_shadow_pairs_total", outcome=o) for o in OUTCOMES}


def wait_for_pairs(server: ServedProcess, total: int, *, timeout: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while (counted := pairs(server)) and sum(counted.values()) < total:
        assert time.monotonic() < deadline, f"{counted}: fewer than {total} pairs"
        time.sleep(0.05)
    return counted


def score(server: ServedProcess, x: float) -> tuple[int, float]:
    """Production's answer to one row, and how long the client waited for it."""
    started = time.perf_counter()
    answer = server.post({"dataframe_records": [{"x": x}]})
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    return int(prediction), elapsed


def test_pairs_are_counted_exactly_and_the_shadow_counts_copies_apart(
    serve: object, versions: tuple[str, str]
) -> None:
    (shadow,) = serve(  # type: ignore[operator]
        (versions[1], {"ALIASROLL_MIRROR_TOKEN": TOKEN, "ALIASROLL_TRACK": "shadow"})
    )
    (production,) = serve((versions[0], mirroring_to(shadow.url)))  # type: ignore[operator]
    for x in INPUTS:
        prediction, _ = score(production, x)
        assert prediction == (1 if x >= 0.5 else 0)  # production's answer, whatever the shadow says
    counted = wait_for_pairs(production, len(INPUTS))
    assert counted == {
        "agree": len(INPUTS) - len(DISAGREEING),
        "disagree": len(DISAGREEING),
        "shadow_error": 0,
        "timeout": 0,
        "dropped": 0,
    }
    # One numeric difference a pair: 1 on each disagreement, 0 on the others.
    assert metric(production, "aliasroll_serving_shadow_abs_difference_count") == len(INPUTS)
    assert metric(production, "aliasroll_serving_shadow_abs_difference_sum") == len(DISAGREEING)
    # The shadow answered every copy, and none counts as its client traffic (what a canary's
    # analysis reads); its predictions are its own distribution, marked mirrored.
    assert metric(shadow, "aliasroll_serving_mirrored_requests_total", code="200") == len(INPUTS)
    assert metric(shadow, "aliasroll_serving_requests_total", code="200") == 0
    assert metric(shadow, "aliasroll_serving_request_duration_seconds_count") == 0
    assert metric(shadow, "aliasroll_serving_prediction_value_count", mirrored="true") == len(INPUTS)
    shadow_zeros = sum(1 for x in INPUTS if x < 0.7)
    assert (
        metric(shadow, "aliasroll_serving_prediction_value_bucket", mirrored="true", le="0.0") == shadow_zeros
    )
    production_zeros = sum(1 for x in INPUTS if x < 0.5)
    assert (
        metric(production, "aliasroll_serving_prediction_value_bucket", mirrored="false", le="0.0")
        == production_zeros
    )
    assert metric(production, "aliasroll_serving_requests_total", code="200") == len(INPUTS)
    # A client that marks its request as a copy without the token is client traffic.
    forged = shadow.session.post(
        shadow.url + "/invocations",
        json={"dataframe_records": [{"x": 0.9}]},
        headers={"X-Aliasroll-Mirror": "1"},
        timeout=10,
    )
    assert forged.status_code == 200
    assert metric(shadow, "aliasroll_serving_requests_total", code="200") == 1
    assert metric(shadow, "aliasroll_serving_mirrored_requests_total", code="200") == len(INPUTS)


def test_a_sleeping_shadow_never_holds_a_client_and_a_full_queue_drops(
    serve: object, versions: tuple[str, str]
) -> None:
    (slow,) = serve(  # type: ignore[operator]
        (versions[1], {"ALIASROLL_MIRROR_TOKEN": TOKEN, "THRESHOLD_MODEL_SLEEP_SECONDS": "5"})
    )
    production_settings = mirroring_to(
        slow.url,
        ALIASROLL_SHADOW_TIMEOUT_SECONDS="1",
        ALIASROLL_SHADOW_QUEUE="2",
        ALIASROLL_SHADOW_CONCURRENCY="1",
    )
    (production,) = serve((versions[0], production_settings))  # type: ignore[operator]
    waits = [score(production, x)[1] for x in INPUTS[:10]]
    # Ten clients, each answered in far less than one shadow call (5 s) or one deadline (1 s): none
    # waited on the shadow.
    assert max(waits) < 0.5, waits
    counted = wait_for_pairs(production, 10)
    # One copy in flight, two queued (each cut at the 1 s deadline), the rest dropped at once: all
    # of them when the ten clients took less than a second, as they do on a quiet machine.
    assert counted["agree"] == counted["disagree"] == counted["shadow_error"] == 0
    assert counted["timeout"] + counted["dropped"] == 10
    assert counted["timeout"] >= 3
    assert counted["dropped"] >= 1
    # Still answered at production's pace once the copies are cut.
    assert score(production, 0.9)[1] < 0.5


class Flood:
    """A hostile shadow: answers 200 and then streams JSON without end, counting what it got out."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.listener.getsockname()[1]
        self.sent: list[int] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._flood, args=(connection,), daemon=True).start()

    def _flood(self, connection: socket.socket) -> None:
        sent = 0
        with connection:
            connection.recv(65536)  # the copy (small here)
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
                for _ in range(50_000):  # 3 GiB if nothing stopped it
                    connection.sendall(b"1," * 32768)
                    sent += 65536
            except OSError:
                pass
        self.sent.append(sent)

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it listening.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def test_a_flooding_shadow_is_cut_at_the_byte_budget_and_a_gone_one_costs_clients_nothing(
    serve: object, versions: tuple[str, str]
) -> None:
    flood = Flood()
    try:
        settings = mirroring_to(
            f"http://127.0.0.1:{flood.port}",
            ALIASROLL_SHADOW_MAX_ANSWER_BYTES="65536",
            ALIASROLL_SHADOW_TIMEOUT_SECONDS="20",
        )
        (production,) = serve((versions[0], settings))  # type: ignore[operator]
        started = time.monotonic()
        waits = [score(production, x)[1] for x in (0.1, 0.6, 0.9)]
        assert max(waits) < 0.5, waits
        counted = wait_for_pairs(production, 3)
        # Cut at the budget, long before the deadline (20 s).
        assert time.monotonic() - started < 10
        assert counted["shadow_error"] == 3
        assert metric(production, "aliasroll_serving_shadow_errors_total", reason="too_large") == 3
        deadline = time.monotonic() + 10
        while len(flood.sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # What each flood got out before production closed on it: the budget plus the sockets' buffers.
        assert len(flood.sent) == 3
        assert max(flood.sent) < 32 * 1024 * 1024, flood.sent
    finally:
        flood.close()
    # The shadow is gone: clients are answered as before, the copies count as shadow errors.
    for x in (0.2, 0.8):
        assert score(production, x)[1] < 0.5
    wait_for_pairs(production, 5)
    assert metric(production, "aliasroll_serving_shadow_errors_total", reason="connection") == 2
    assert metric(production, "aliasroll_serving_shadow_errors_total", reason="too_large") == 3
    assert metric(production, "aliasroll_serving_requests_total", code="200") == 5
