"""Whose fault a failed scoring request is: the status it answers, the kind the metrics count, and
what its message may say; the credentials masked in the log; the drain settings."""

from __future__ import annotations

import pydantic
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from prometheus_client.parser import text_string_to_metric_families

from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.metrics import Metrics
from aliasroll.serving.model import prediction_failure
from aliasroll.serving.protocol import RequestError
from aliasroll.serving.redaction import MASK, redact, secret_values

SECRET = "s3cr3t-value"


def _pydantic_failure() -> MlflowException:
    class Chat(pydantic.BaseModel):
        messages: list[str]

    try:
        Chat.model_validate({"messages": 3})
    except pydantic.ValidationError as invalid:
        # How MLflow's pydantic-typed models (ChatModel, ResponsesAgent) report it: default code 500.
        try:
            raise MlflowException("Model input is not a valid chat request.") from invalid
        except MlflowException as error:
            return error
    raise AssertionError("the input validated")


FAILURES: list[tuple[str, Exception, int, str, str]] = [
    (
        "schema enforcement (MLflow's INVALID_PARAMETER_VALUE)",
        MlflowException.invalid_parameter_value(
            "Failed to enforce schema of data with schema ['text']. Error: Model is missing inputs ['text'].",
            error_class="SCHEMA_ENFORCEMENT_FAILED",
        ),
        400,
        "input",
        "does not fit the model",
    ),
    (
        "another 4xx MlflowException keeps its status",
        MlflowException("no such feature", error_code=RESOURCE_DOES_NOT_EXIST),
        404,
        "input",
        "does not fit the model",
    ),
    (
        "type-hint validation, which MLflow raises with its default 500",
        MlflowException("Failed to validate the input data against the type hint `list[str]`. Error: ..."),
        400,
        "input",
        "does not fit the model",
    ),
    ("pydantic validation, MLflow's default 500", _pydantic_failure(), 400, "input", "not a valid chat"),
    (
        "an MlflowException of the model's own",
        MlflowException(f"feature store down: token {SECRET}"),
        500,
        "model",
        "it raised MlflowException",
    ),
    ("ValueError", ValueError(f"bad row {SECRET}"), 500, "model", "it raised ValueError"),
    ("TypeError", TypeError("unsupported operand"), 500, "model", "it raised TypeError"),
    ("KeyError", KeyError("text"), 500, "model", "it raised KeyError"),
    ("ZeroDivisionError", ZeroDivisionError("division by zero"), 500, "model", "it raised ZeroDivisionError"),
    ("MemoryError", MemoryError(), 500, "model", "it raised MemoryError"),
    ("RuntimeError", RuntimeError("CUDA error"), 500, "model", "it raised RuntimeError"),
    ("a RequestError passes as it is", RequestError(413, "too large"), 413, "input", "too large"),
]


@pytest.mark.parametrize(
    ("case", "error", "status", "kind", "message"), FAILURES, ids=[f[0] for f in FAILURES]
)
def test_what_a_failed_predict_call_answers(
    case: str, error: Exception, status: int, kind: str, message: str
) -> None:
    failure = prediction_failure(error)
    assert (failure.status, failure.kind) == (status, kind)
    assert message in str(failure)
    if kind == "model":
        assert failure.error_code == "INTERNAL_ERROR"
        # The exception's own text (input, credentials) never reaches the client.
        assert SECRET not in failure.body().decode()
        assert "server's log has the traceback" in str(failure)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "input"), (413, "input"), (415, "input"), (500, "server"), (503, "server"), (504, "server")],
)
def test_a_request_errors_kind_follows_its_status_unless_given(status: int, kind: str) -> None:
    assert RequestError(status, "x").kind == kind
    assert RequestError(status, "x", kind="model").kind == "model"


ENV = {
    "MLFLOW_TRACKING_TOKEN": SECRET,
    "MLFLOW_TRACKING_PASSWORD": "hunter2-pw",
    "AWS_SECRET_ACCESS_KEY": "aws/secret+key",
    "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=abc123==",
    "MLFLOW_TRACKING_USERNAME": "alice",
    "DB_API_KEY": "dbkey-1",
    "SHORT_TOKEN": "1",
    "SHORT_PASSWORD": "pw9",
    "UV_INDEX_URL": "https://s3cr3t-deploy-token@pypi.fury.io/acme/simple",
    "PIP_EXTRA_INDEX_URL": "https://bob:xtra-pa55@extra.example/simple",
    "UV_EXTRA_INDEX_URL": "http://mirror.example/simple",
    "MODEL_URI": "models:/sentiment/3",
    "PATH": "/usr/bin",
}

REDACTIONS: list[tuple[str, str, str]] = [
    ("token", f"401 with token {SECRET}", f"401 with token {MASK}"),
    ("password and secret key", "hunter2-pw / aws/secret+key", f"{MASK} / {MASK}"),
    ("connection string", "bad AccountKey=abc123==;x", f"bad {MASK};x"),
    ("url userinfo", "https://bob:pa55@db.internal/x", f"https://{MASK}@db.internal/x"),
    ("url userinfo of a known secret", f"https://alice:{SECRET}@h/", f"https://{MASK}@h/"),
    ("a user name alone is not a credential", "user alice", "user alice"),
    ("a flag value is a setting, not a secret", "SHORT_TOKEN is 1", "SHORT_TOKEN is 1"),
    # Review 2026-12 finding 13: a token alone as userinfo, the index variables, and short values.
    (
        "an index variable that carries a token is a secret whole",
        "cannot reach https://s3cr3t-deploy-token@pypi.fury.io/acme/simple",
        f"cannot reach {MASK}",
    ),
    (
        "token-only userinfo of a URL no variable holds",
        "cannot reach https://other-deploy-token@pypi.fury.io/acme/simple",
        f"cannot reach https://{MASK}@pypi.fury.io/acme/simple",
    ),
    ("an index token outside its URL", "token s3cr3t-deploy-token refused", f"token {MASK} refused"),
    ("an index URL's password outside its URL", "password xtra-pa55 refused", f"password {MASK} refused"),
    (
        "any URL's userinfo, known or not",
        "git+https://ghp_abc@github.com/o/r and https://u:p@h/x",
        f"git+https://{MASK}@github.com/o/r and https://{MASK}@h/x",
    ),
    ("a short secret standing alone", "login pw9 failed", f"login {MASK} failed"),
    ("a short secret inside a longer word is not it", "pw9x", "pw9x"),
    (
        "an index without credentials is no secret",
        "from http://mirror.example/simple",
        "from http://mirror.example/simple",
    ),
    ("settings that are not credentials", "models:/sentiment/3 /usr/bin", "models:/sentiment/3 /usr/bin"),
]


@pytest.mark.parametrize(("case", "text", "logged"), REDACTIONS, ids=[r[0] for r in REDACTIONS])
def test_credentials_are_masked_before_logging(case: str, text: str, logged: str) -> None:
    assert redact(text, secret_values(ENV)) == logged


def test_a_secret_containing_another_is_masked_whole() -> None:
    secrets = secret_values({"A_TOKEN": "abcd", "B_TOKEN": "abcdefgh"})
    assert secrets == ("abcdefgh", "abcd")
    assert redact("abcdefgh", secrets) == MASK


DRAIN: list[tuple[str, dict[str, str], tuple[int, int] | str]] = [
    ("defaults", {}, (20, 3)),
    ("a longer drain", {"DRAIN_SECONDS": "30"}, (30, 3)),
    ("a short drain keeps time for what is in flight", {"DRAIN_SECONDS": "2"}, (2, 1)),
    ("the shortest", {"DRAIN_SECONDS": "1"}, (1, 0)),
    ("no accept window", {"DRAIN_ACCEPT_SECONDS": "0"}, (20, 0)),
    ("over the pod's grace period", {"DRAIN_SECONDS": "35"}, "terminationGracePeriodSeconds"),
    ("zero", {"DRAIN_SECONDS": "0"}, "between 1 and 30"),
    ("not a number", {"DRAIN_SECONDS": "20s"}, "DRAIN_SECONDS='20s' is not an integer"),
    (
        "an accept window as long as the drain",
        {"DRAIN_SECONDS": "5", "DRAIN_ACCEPT_SECONDS": "5"},
        "must be less than DRAIN_SECONDS=5",
    ),
]


@pytest.mark.parametrize(("case", "env", "expected"), DRAIN, ids=[d[0] for d in DRAIN])
def test_drain_settings(case: str, env: dict[str, str], expected: tuple[int, int] | str) -> None:
    env = {"MODEL_URI": "models:/sentiment/3", **env}
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            ServingConfig.from_env(env)
    else:
        config = ServingConfig.from_env(env)
        assert (config.drain_seconds, config.drain_accept_seconds) == expected


def test_metrics_count_failures_by_kind_and_answers_by_code_per_version() -> None:
    metrics = Metrics(
        ServingConfig.from_env({"MODEL_URI": "models:/sentiment/3", "ALIASROLL_TRACK": "canary"})
    )
    metrics.observe(code=200, seconds=0.01)
    metrics.observe(code=500, seconds=0.02, cause="INTERNAL_ERROR", kind="model")
    metrics.observe(code=400, seconds=0.001, cause="BAD_REQUEST", kind="input")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    version = (("model", "sentiment"), ("track", "canary"), ("version", "3"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted((*version, *labels.items()))))]

    assert [value("aliasroll_serving_requests_total", code=code) for code in ("200", "400", "500")] == [
        1,
        1,
        1,
    ]
    assert [
        value("aliasroll_serving_prediction_failures_total", kind=kind)
        for kind in ("input", "model", "server")
    ] == [1, 1, 0]
    assert value("aliasroll_serving_request_duration_seconds_count") == 3
    assert value("aliasroll_serving_request_duration_seconds_bucket", le="0.01") == 2


def test_the_termination_message_is_always_redacted(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from aliasroll.serving.__main__ import write_termination_message

    path = Path(str(tmp_path)) / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.setenv("UV_INDEX_URL", "https://idx-t0ken@mirror.example/simple")
    write_termination_message(f"failed with {SECRET} from https://idx-t0ken@mirror.example/simple")
    assert path.read_text() == f"failed with {MASK} from {MASK}"
