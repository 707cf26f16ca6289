"""The model server against a real MLflow registry, started as the image starts it.

Covers MLflow's scoring protocol (every input format, the response shape), the version header,
readiness before and after the load, the bad-input table, a model that raises (500, counted apart
from bad input), the drain on SIGTERM, and a version that cannot load.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mlflowserver import MlflowServer
from support.served import ServedProcess

REPO = Path(__file__).resolve().parents[2]
PICKY_MODEL = Path(__file__).parent / "models" / "picky_model.py"

GREAT, TERRIBLE = "this is great", "this is terrible"
# The registry token the picky server gets (the test registry ignores it): it must never show.
TOKEN = "tok-3f9a1c7e5b2d"


@pytest.fixture(scope="module")
def sentiment_uri(mlflow_server: MlflowServer) -> str:
    from examples.sentiment.register import register_version

    return f"models:/served-sentiment/{register_version(mlflow_server.url, 'served-sentiment')}"


@pytest.fixture(scope="module")
def picky_uri(mlflow_server: MlflowServer) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(mlflow_server.url)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PICKY_MODEL),
            # A named column: requests must carry "text".
            signature=infer_signature(pd.DataFrame({"text": ["x"]}), [1]),
            input_example={"text": ["warm"]},
            pip_requirements=["mlflow-skinny", "pandas"],
            registered_model_name="picky",
        )
    return f"models:/picky/{info.registered_model_version}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def sentiment(sentiment_uri: str, mlflow_server: MlflowServer, workdir: Path) -> Iterator[ServedProcess]:
    server = ServedProcess(model_uri=sentiment_uri, tracking_uri=mlflow_server.url, workdir=workdir).start()
    server.wait_until("/ready")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def picky(picky_uri: str, mlflow_server: MlflowServer, workdir: Path) -> Iterator[ServedProcess]:
    server = ServedProcess(
        model_uri=picky_uri,
        tracking_uri=mlflow_server.url,
        workdir=workdir,
        env={"ALIASROLL_MAX_REQUEST_BYTES": "2048", "MLFLOW_TRACKING_TOKEN": TOKEN},
    ).start()
    server.wait_until("/ready")
    yield server
    server.stop()


# The scoring protocol, as `mlflow models serve` speaks it.

FORMATS: list[tuple[str, Any, str]] = [
    (
        "dataframe_split",
        {"dataframe_split": {"columns": ["text"], "data": [[GREAT], [TERRIBLE]]}},
        "application/json",
    ),
    ("dataframe_records", {"dataframe_records": [{"text": GREAT}, {"text": TERRIBLE}]}, "application/json"),
    ("instances", {"instances": [GREAT, TERRIBLE]}, "application/json"),
    ("inputs", {"inputs": [GREAT, TERRIBLE]}, "application/json"),
    ("csv", f"text\n{GREAT}\n{TERRIBLE}\n", "text/csv"),
    ("json with charset", {"inputs": [GREAT, TERRIBLE]}, "application/json; charset=utf-8"),
]


@pytest.mark.parametrize(("name", "body", "content_type"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_input_format_scores_the_example_model(
    sentiment: ServedProcess, sentiment_uri: str, name: str, body: Any, content_type: str
) -> None:
    answer = sentiment.post(body, content_type=content_type)
    assert answer.status_code == 200, answer.text
    great, terrible = answer.json()["predictions"]
    assert great > 0.9
    assert terrible < 0.1
    assert answer.headers["X-Model-Version"] == sentiment_uri.rsplit("/", 1)[1]
    # Only the version: the model's name and URI are the cluster's (the admin port's /ready, /metrics).
    assert "X-Model-Name" not in answer.headers
    assert "X-Model-Uri" not in answer.headers


def test_same_answers_as_mlflow_models_serve(
    sentiment: ServedProcess, sentiment_uri: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    """The reference server, on the same version: the example scores the same through both."""
    venv_bin = Path(sys.executable).parent
    reference = ServedProcess(
        model_uri=sentiment_uri,
        tracking_uri=mlflow_server.url,
        workdir=workdir,
        env={"PATH": f"{venv_bin}:{os.environ['PATH']}"},
    )
    reference.command = [
        str(venv_bin / "mlflow"),
        "models",
        "serve",
        "-m",
        sentiment_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(reference.port),
    ]
    reference.start()
    try:
        reference.wait_until("/ping", timeout=180)
        for _, body, content_type in FORMATS:
            ours, theirs = (
                sentiment.post(body, content_type=content_type),
                reference.post(body, content_type=content_type),
            )
            assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
        great, terrible = reference.post({"inputs": [GREAT, TERRIBLE]}).json()["predictions"]
        assert great > 0.9
        assert terrible < 0.1
        for path in ("/ping", "/health"):
            assert sentiment.session.get(sentiment.url + path).status_code == 200
        # MLflow's /version, on the admin port (the serving port, where clients go, answers it 404).
        assert sentiment.get("/version").text == reference.session.get(reference.url + "/version").text
    finally:
        reference.stop()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(sentiment: ServedProcess) -> None:
    texts = [f"{GREAT} {i}" if i % 2 else f"{TERRIBLE} {i}" for i in range(64)]

    def score(text: str) -> float:
        answer = sentiment.session.post(sentiment.url + "/invocations", json={"inputs": [text]}, timeout=30)
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        return float(prediction)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(score, texts))
    for text, value in zip(texts, scores, strict=True):
        assert (value > 0.5) == text.startswith(GREAT), text
    metrics = sentiment.get("/metrics").text
    assert 'aliasroll_serving_requests_total{code="200"' in metrics
    assert "aliasroll_serving_batch_requests_bucket" in metrics


# Readiness and lifecycle.


def test_live_at_once_ready_only_after_load_and_warm_up(
    sentiment_uri: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    server = ServedProcess(model_uri=sentiment_uri, tracking_uri=mlflow_server.url, workdir=workdir).start()
    try:
        server.wait_until("/live")
        # Importing MLflow alone takes seconds: the first answers come while the model loads.
        not_yet = server.get("/ready")
        assert not_yet.status_code == 503
        assert server.post({"inputs": [GREAT]}).status_code == 503
        ready = server.wait_until("/ready")
        assert ready.json() == {"ready": True, "model": sentiment_uri}
        assert "warmed up on the model's input example" in server.log()
        assert server.post({"inputs": [GREAT]}).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        (
            "missing version",
            {"MODEL_URI": "models:/served-sentiment/999"},
            "cannot load models:/served-sentiment/999",
        ),
        ("missing model", {"MODEL_URI": "models:/no-such-model/1"}, "cannot load models:/no-such-model/1"),
        ("load_context raises", {"PICKY_MODEL_FAIL_TO_LOAD": "1"}, "this version cannot load"),
        (
            "registry unreachable",
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
            "cannot load",
        ),
    ],
)
def test_a_version_that_cannot_load_exits_non_zero(
    picky_uri: str, mlflow_server: MlflowServer, workdir: Path, case: str, env: dict[str, str], expected: str
) -> None:
    server = ServedProcess(
        model_uri=picky_uri, tracking_uri=mlflow_server.url, workdir=workdir, env=env
    ).start()
    try:
        assert server.wait_exit() == 1
        assert expected in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("uri", "message"),
    [("", "MODEL_URI is not set"), ("models:/sentiment@production", "names an alias")],
)
def test_bad_settings_exit_with_code_2(
    mlflow_server: MlflowServer, workdir: Path, uri: str, message: str
) -> None:
    server = ServedProcess(model_uri=uri, tracking_uri=mlflow_server.url, workdir=workdir).start()
    assert server.wait_exit(timeout=60) == 2
    assert message in server.log()


# Bad input: a clear 4xx, nothing of the payload in the log, and the server keeps serving.

BAD_INPUT: list[tuple[str, bytes, str, int, str]] = [
    ("malformed JSON", b'{"inputs": [1,', "application/json", 400, "valid JSON"),
    ("a JSON list", b"[1, 2]", "application/json", 400, "Received a list"),
    ("no format key", b'{"rows": [1]}', "application/json", 400, "exactly one of the input fields"),
    ("two format keys", b'{"inputs": [1], "instances": [1]}', "application/json", 400, "exactly one"),
    (
        "wrong schema",
        b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}',
        "application/json",
        400,
        "does not fit the model",
    ),
    ("params not an object", b'{"inputs": ["x"], "params": [1]}', "application/json", 400, "'params'"),
    ("unsupported content type", b"hello", "text/plain", 415, "only supports the following content types"),
    ("not UTF-8", b'{"inputs": ["x"]}', "application/json; charset=latin-1", 415, "only supports UTF-8"),
    (
        "over the size limit",
        b'{"inputs": ["' + b"x" * 4096 + b'"]}',
        "application/json",
        413,
        "larger than 2048 bytes",
    ),
    ("broken CSV", b'a,b\n"unclosed', "text/csv", 400, "Failed to parse"),
]


@pytest.mark.parametrize(
    ("case", "body", "content_type", "status", "message"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_gets_a_clear_client_error(
    picky: ServedProcess, case: str, body: bytes, content_type: str, status: int, message: str
) -> None:
    answer = picky.post(None, raw=body, content_type=content_type)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert message in error["message"]
    assert error["error_code"]
    assert "x" * 100 not in picky.log()
    # The server keeps serving.
    assert picky.post({"dataframe_records": [{"text": "still here"}]}).json() == {"predictions": [10]}


def test_a_failing_request_in_a_batch_fails_alone(picky: ServedProcess) -> None:
    bodies = [{"dataframe_records": [{"text": "boom" if i == 5 else f"row {i}"}]} for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda body: picky.post(body), bodies))
    for index, answer in enumerate(answers):
        if index == 5:
            assert answer.status_code == 500
        else:
            assert answer.json() == {"predictions": [len(f"row {index}")]}


# A model that raises is the server's failure (500), counted apart from bad input, per version.


def scrape(server: ServedProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = server.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


def test_a_model_that_raises_answers_500_and_is_counted_apart_from_bad_input(
    picky: ServedProcess, picky_uri: str
) -> None:
    version = picky_uri.rsplit("/", 1)[1]
    before = scrape(picky)

    failed = picky.post({"dataframe_records": [{"text": "boom"}]})
    assert failed.status_code == 500, failed.text
    assert failed.headers["Content-Type"] == "application/json"
    assert failed.headers["X-Model-Version"] == version
    assert failed.json() == {
        "error_code": "INTERNAL_ERROR",
        "message": "The model failed on this request: it raised ValueError. "
        "The server's log has the traceback.",
    }
    malformed = picky.post(None, raw=b'{"inputs": [1,')
    assert malformed.status_code == 400, malformed.text
    assert "valid JSON" in malformed.json()["message"]
    wrong_schema = picky.post({"dataframe_split": {"columns": ["a"], "data": [[1]]}})
    assert wrong_schema.status_code == 400, wrong_schema.text
    assert "does not fit the model" in wrong_schema.json()["message"]

    after = scrape(picky)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, version=version, **labels) - metric(
            before, name, version=version, **labels
        )

    failures = "aliasroll_serving_prediction_failures_total"
    assert (grew(failures, kind="model"), grew(failures, kind="input"), grew(failures, kind="server")) == (
        1,
        2,
        0,
    )
    requests_total = "aliasroll_serving_requests_total"
    assert (grew(requests_total, code="500"), grew(requests_total, code="400")) == (1, 2)
    # What a canary analysis derives per version: the 5xx share and latency percentiles.
    assert grew("aliasroll_serving_request_duration_seconds_count") == 3
    assert grew("aliasroll_serving_request_duration_seconds_bucket", le="+Inf") == 3
    # The traceback is in the log, for the model's owner.
    log = picky.log()
    assert "the model raised on a request (answered 500)" in log
    assert "Traceback (most recent call last)" in log
    assert "ValueError: the model does not take 'boom'" in log


def test_a_model_failure_never_shows_the_credentials(picky: ServedProcess) -> None:
    failed = picky.post({"dataframe_records": [{"text": "leak"}]})
    assert failed.status_code == 500, failed.text
    assert "ConnectionError" in failed.json()["message"]
    assert TOKEN not in failed.text
    assert "ConnectionError: cannot reach https://***@features.internal (token ***)" in picky.log()
    assert TOKEN not in picky.log()


# The drain on SIGTERM: out of the endpoints at once, nothing in flight lost, out within DRAIN_SECONDS.


def wait_for_log(server: ServedProcess, text: str, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never showed in the log:\n{server.log()}")
        time.sleep(0.02)


def test_sigterm_drains_without_losing_a_request(
    picky_uri: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    drain, accept = 15, 5
    server = ServedProcess(
        model_uri=picky_uri,
        tracking_uri=mlflow_server.url,
        workdir=workdir,
        env={"DRAIN_SECONDS": str(drain), "DRAIN_ACCEPT_SECONDS": str(accept)},
    ).start()
    assert server.process is not None
    try:
        server.wait_until("/ready")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # Longer than the accept window: it is still in flight when the listener closes.
            in_flight = pool.submit(server.post, {"dataframe_records": [{"text": "sleep 7"}]})
            wait_for_log(server, "picky model: sleeping on 'sleep 7'")
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            not_ready = server.wait_until("/ready", status=503, timeout=accept)
            assert not_ready.json() == {"ready": False, "model": picky_uri, "draining": True}
            assert server.get("/live").status_code == 200
            # A client whose routing has not caught up yet is still answered, told to reconnect.
            late = requests.post(
                server.url + "/invocations", json={"dataframe_records": [{"text": "late"}]}, timeout=10
            )
            assert (late.status_code, late.json()) == (200, {"predictions": [4]})
            assert late.headers["Connection"] == "close"

            answer = in_flight.result(timeout=drain)
            assert (answer.status_code, answer.json()) == (200, {"predictions": [len("sleep 7")]})
        assert server.wait_exit(timeout=drain) == 0
        assert time.monotonic() - signalled < drain
        assert "draining: not ready" in server.log()
    finally:
        server.stop()


def test_a_request_longer_than_the_drain_does_not_hold_the_process(
    picky_uri: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    server = ServedProcess(
        model_uri=picky_uri,
        tracking_uri=mlflow_server.url,
        workdir=workdir,
        env={"DRAIN_SECONDS": "3", "DRAIN_ACCEPT_SECONDS": "1"},
    ).start()
    assert server.process is not None
    try:
        server.wait_until("/ready")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(server.post, {"dataframe_records": [{"text": "sleep 120"}]})
            wait_for_log(server, "picky model: sleeping on 'sleep 120'")
            server.process.send_signal(signal.SIGTERM)
            # DRAIN_SECONDS, then 2 s for the predict thread, then out: far before the model wakes.
            assert server.wait_exit(timeout=30) == 1
            answer = stuck.result(timeout=10)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "past the drain deadline" in server.log()
    finally:
        server.stop()


# The two ports: clients reach only scoring and MLflow's health checks.


def test_the_cluster_s_endpoints_are_on_the_admin_port_only(
    sentiment: ServedProcess, sentiment_uri: str
) -> None:
    for path in ("/metrics", "/version", "/ready", "/live"):
        routed = sentiment.session.get(sentiment.url + path, timeout=10)
        assert routed.status_code == 404, path
        assert "served-sentiment" not in routed.text
        assert sentiment.session.get(sentiment.admin_url + path, timeout=10).status_code == 200, path
    assert sentiment.get("/ready").json() == {"ready": True, "model": sentiment_uri}
    assert "aliasroll_serving_requests_total" in sentiment.get("/metrics").text
    # The admin port scores nothing.
    scored = sentiment.session.post(
        sentiment.admin_url + "/invocations", json={"inputs": [GREAT]}, timeout=10
    )
    assert scored.status_code == 404


def test_past_the_requests_in_flight_bound_the_server_answers_503_at_once(
    picky_uri: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    server = ServedProcess(
        model_uri=picky_uri,
        tracking_uri=mlflow_server.url,
        workdir=workdir,
        env={"ALIASROLL_MAX_IN_FLIGHT": "2", "DRAIN_SECONDS": "2"},
    ).start()
    try:
        server.wait_until("/ready")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Two predict threads, each asleep on one request: two in flight.
            held = [
                pool.submit(server.post, {"dataframe_records": [{"text": f"sleep {seconds}"}]})
                for seconds in (3, 4)
            ]
            wait_for_log(server, "picky model: sleeping on 'sleep 3'")
            wait_for_log(server, "picky model: sleeping on 'sleep 4'")
            started = time.monotonic()
            refused = server.post({"dataframe_records": [{"text": "one more"}]})
            assert time.monotonic() - started < 1, "refused at once, not queued"
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
            assert "ALIASROLL_MAX_IN_FLIGHT" in refused.json()["message"]
            # Probes and scrapes are on the admin port: never refused under load.
            assert server.get("/ready").status_code == 200
            assert [future.result(timeout=30).status_code for future in held] == [200, 200]
        assert server.post({"dataframe_records": [{"text": "again"}]}).json() == {"predictions": [5]}
        assert metric(scrape(server), "aliasroll_serving_requests_total", code="503") == 1
    finally:
        server.stop()


def test_dockerfile_runs_the_entry_point_the_tests_run() -> None:
    dockerfile = (REPO / "serving-image" / "Dockerfile").read_text()
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["python", "-m", "aliasroll.serving"]
    assert "USER 10001" in dockerfile
