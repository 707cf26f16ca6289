"""The model server's pure parts: decoding requests, merging them into batches, its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.protocol import RequestError, decode, merge

JSON = "application/json"


def test_row_shaped_requests_merge_in_order() -> None:
    a = decode(b'{"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}}', JSON)
    b = decode(b'{"dataframe_split": {"columns": ["text"], "data": [["c"]]}}', JSON)
    assert (a.rows, b.rows) == (2, 1)
    assert a.batch_key == b.batch_key
    assert merge([a, b]) == {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"], ["c"]]}}

    records = [
        decode(b'{"dataframe_records": [{"x": 1}, {"x": 2}]}', JSON),
        decode(b'{"dataframe_records": [{"x": 3}]}', JSON),
    ]
    assert merge(records) == {"dataframe_records": [{"x": 1}, {"x": 2}, {"x": 3}]}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}',
            b'{"dataframe_split": {"columns": ["b"], "data": [[1]]}}',
        ),
        (b'{"dataframe_records": [{"a": 1}]}', b'{"dataframe_records": [{"b": 1}]}'),
        (b'{"inputs": ["text"]}', b'{"instances": ["text"]}'),
        (b'{"inputs": ["text"]}', b'{"inputs": [1]}'),
    ],
)
def test_different_shapes_never_share_a_batch(first: bytes, second: bytes) -> None:
    assert decode(first, JSON).batch_key != decode(second, JSON).batch_key


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": ["x"], "params": {"temperature": 0.1}}',  # params apply to the whole call
        b'{"dataframe_split": {"index": [7], "columns": ["a"], "data": [[1]]}}',  # an explicit index
        b'{"inputs": {"a": [1, 2]}}',  # columnar
        b'{"inputs": []}',
        b'{"dataframe_records": [{"a": 1}, {"b": 2}]}',  # ragged records
    ],
)
def test_requests_that_are_scored_alone(body: bytes) -> None:
    request = decode(body, JSON)
    assert (request.rows, request.batch_key) == (None, None)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{", JSON, 400),
        (b"[]", JSON, 400),
        (b"3", JSON, 400),
        (b'{"nope": 1}', JSON, 400),
        (b'{"inputs": [1], "params": "x"}', JSON, 400),
        (b"x", "text/plain", 415),
        (b"x", None, 415),
        (b"{}", "application/json; charset=utf-16", 415),
        (b"{}", "application/json; format=pandas-split", 415),
        (b"\xff\xfe", "text/csv", 400),
    ],
)
def test_bad_requests(body: bytes, content_type: str | None, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        decode(body, content_type)
    assert caught.value.status == status
    assert b'"error_code"' in caught.value.body()


def test_csv_passes_through() -> None:
    request = decode(b"text\nhello\n", "text/csv; charset=UTF-8")
    assert (request.payload, request.batch_key) == ("text\nhello\n", None)


def test_config_from_the_pod_environment() -> None:
    config = ServingConfig.from_env(
        {
            "MODEL_URI": "models:/sentiment/3",
            "PORT": "9000",
            "SCRATCH_DIR": "/tmp/s",
            "ALIASROLL_BATCHING": "off",
            "ALIASROLL_TRACK": "canary",
        }
    )
    assert (config.model_name, config.model_version, config.port, config.batching) == (
        "sentiment",
        "3",
        9000,
        False,
    )
    assert config.scratch_dir == Path("/tmp/s")
    assert config.track == "canary"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MODEL_URI is not set"),
        ({"MODEL_URI": "models:/sentiment@production"}, "names an alias"),
        ({"MODEL_URI": "models:/m/1", "PORT": "http"}, "PORT='http' is not an integer"),
        ({"MODEL_URI": "models:/m/1", "PORT": "0"}, "between 1 and 65535"),
        ({"MODEL_URI": "models:/m/1", "ALIASROLL_BATCHING": "maybe"}, "use on or off"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServingConfig.from_env(env)
