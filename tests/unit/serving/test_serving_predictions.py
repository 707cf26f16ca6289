"""Predictions read back from scoring answers (serving/predictions.py): the shapes MLflow answers in,
the comparison of production's predictions with the shadow's, and the bounded label set; and the
shadow's settings (serving/config.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aliasroll.serving.config import ConfigError, ServingConfig, ShadowConfig
from aliasroll.serving.predictions import (
    OTHER,
    Comparison,
    LabelCap,
    Unparseable,
    compare,
    predictions_of,
    rows_of,
    single_values,
)
from aliasroll.serving.shadow_metrics import PredictionMetrics

# --- reading an answer -------------------------------------------------------------------------

ANSWERS: list[tuple[str, bytes, Any]] = [
    ("predictions", b'{"predictions": [0.5, 1]}', [0.5, 1]),
    ("bare list", b'["a", "b"]', ["a", "b"]),
    ("object of columns", b'{"predictions": {"label": ["a"]}}', {"label": ["a"]}),
    ("scalar", b'{"predictions": 3}', 3),
]


@pytest.mark.parametrize(("name", "body", "expected"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_the_predictions_of_an_answer(name: str, body: bytes, expected: Any) -> None:
    assert predictions_of(body) == expected


@pytest.mark.parametrize(
    "body", [b"", b"not json", b'{"error_code": "BAD_REQUEST"}', b"3", b'"x"', b"[" * 5000 + b"]" * 5000]
)
def test_an_answer_without_predictions_is_unparseable(body: bytes) -> None:
    with pytest.raises(Unparseable):
        predictions_of(body)


ROWS: list[tuple[str, Any, Any]] = [
    (
        "scalars",
        [0.5, 2, "cat", True, None],
        [(("", 0.5),), (("", 2.0),), (("", "cat"),), (("", "true"),), (("", "null"),)],
    ),
    ("records", [{"label": "a"}, {"label": "b"}], [(("label", "a"),), (("label", "b"),)]),
    ("vectors", [[0.1, 0.9]], [(("0", 0.1), ("1", 0.9))]),
    (
        "columns",
        {"label": ["a", "b"], "score": [1, 2]},
        [(("label", "a"), ("score", 1.0)), (("label", "b"), ("score", 2.0))],
    ),
    ("empty", [], []),
    ("nested too deep", [[[1]]], None),
    ("columns of unequal length", {"a": [1], "b": [1, 2]}, None),
    ("an object of scalars", {"a": 1}, None),
    ("an empty object", {}, None),
    ("a scalar", 3, None),
]


@pytest.mark.parametrize(("name", "predictions", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_predictions_as_rows(name: str, predictions: Any, expected: Any) -> None:
    assert rows_of(predictions) == expected


def test_only_rows_of_one_value_are_in_the_distribution() -> None:
    mixed = [{"label": "a"}, {"label": "b", "score": 1}, 0.5, [2], [[1]], True, None, [1, 2]]
    assert list(single_values(mixed)) == ["a", 0.5, 2.0, "true", "null"]
    assert list(single_values({"label": ["a", "b"]})) == ["a", "b"]
    assert list(single_values({"a": [1], "b": [2]})) == []
    assert list(single_values({"a": 1})) == []
    assert list(single_values(3)) == []


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def test_the_distribution_of_numbers_over_fixed_buckets() -> None:
    registry = CollectorRegistry()
    metrics = PredictionMetrics(
        registry, {"model": "m", "version": "1", "track": ""}, buckets=(0.0, 0.5, 1.0), latency_buckets=(1.0,)
    )
    metrics.observe([-3, 0, 0.2, 0.5, 0.7, 1, 7, math.inf], mirrored=False)
    metrics.observe({"score": [0.9]}, mirrored=True)
    cumulative = {"0.0": 2, "0.5": 4, "1.0": 6, "+Inf": 8}
    for le, count in cumulative.items():
        assert sample(registry, "aliasroll_serving_prediction_value_bucket", le=le, mirrored="false") == count
    assert sample(registry, "aliasroll_serving_prediction_value_count", mirrored="false") == 8
    assert sample(registry, "aliasroll_serving_prediction_value_sum", mirrored="false") == math.inf
    assert sample(registry, "aliasroll_serving_prediction_value_bucket", le="0.5", mirrored="true") == 0
    assert sample(registry, "aliasroll_serving_prediction_value_bucket", le="1.0", mirrored="true") == 1
    assert sample(registry, "aliasroll_serving_prediction_value_count", mirrored="true") == 1
    assert sample(registry, "aliasroll_serving_prediction_value_sum", mirrored="true") == 0.9


def test_the_distribution_of_labels_is_bounded() -> None:
    registry = CollectorRegistry()
    metrics = PredictionMetrics(
        registry, {"model": "m", "version": "1", "track": ""}, buckets=(0.0,), latency_buckets=(1.0,)
    )
    metrics.observe([f"class-{i}" for i in range(30)] + ["class-0", True], mirrored=False)
    metrics.observe(["class-29"], mirrored=True)

    def counted(label: str, mirrored: str = "false") -> float | None:
        return sample(registry, "aliasroll_serving_predictions_total", mirrored=mirrored, **{"class": label})

    assert counted("class-0") == 2
    assert counted("class-19") == 1
    assert counted("class-20") is None
    # Ten labels past the first twenty, and a boolean, counted as other.
    assert counted(OTHER) == 11
    assert counted("class-29", mirrored="true") == 1
    classes = {
        found.labels["class"]
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for found in family.samples
        if found.name == "aliasroll_serving_predictions_total" and found.labels["mirrored"] == "false"
    }
    assert len(classes) == 21


# --- comparing two answers ---------------------------------------------------------------------

TOLERANCE = 0.01
COMPARISONS: list[tuple[str, Any, Any, bool, tuple[float, ...]]] = [
    ("same numbers", [0.5, 1], [0.5, 1.0], True, (0.0, 0.0)),
    ("within the tolerance", [0.5], [0.505], True, (pytest.approx(0.005),)),
    ("past the tolerance", [0.5, 0.5], [0.5, 0.52], False, (0.0, pytest.approx(0.02))),
    ("labels exactly", ["cat", "dog"], ["cat", "dog"], True, ()),
    ("another label", ["cat"], ["Cat"], False, ()),
    ("a number against a label", [1], ["1"], False, ()),
    ("a boolean is a label", [True], [1], False, ()),
    ("fewer rows", [1, 2], [1], False, ()),
    ("more rows", [1], [1, 2], False, ()),
    ("records", [{"y": 1.0}], [{"y": 1.001}], True, (pytest.approx(0.001),)),
    ("records of another key", [{"y": 1.0}], [{"z": 1.0}], False, ()),
    ("a record against a scalar", [{"y": 1.0}], [1.0], False, ()),
    ("vectors", [[0.1, 0.9]], [[0.2, 0.8]], False, (pytest.approx(0.1), pytest.approx(0.1))),
    ("a longer vector", [[0.1, 0.9]], [[0.1, 0.9, 0.0]], False, ()),
    ("columns against records", {"y": [1, 2]}, [{"y": 1}, {"y": 2}], True, (0.0, 0.0)),
    ("records against columns", [{"y": 1}, {"y": 2}], {"y": [1, 3]}, False, (0.0, 1.0)),
    ("infinities", [math.inf], [math.inf], True, ()),
    ("an infinity against a number", [math.inf], [1.0], False, ()),
    ("not row-shaped, equal", {"a": 1}, {"a": 1}, True, ()),
    ("not row-shaped, different", {"a": 1}, {"a": 2}, False, ()),
    ("rows against a scalar", [1], 1, False, ()),
    ("nested in the shadow's rows", [1], [[[1]]], False, ()),
]


@pytest.mark.parametrize(
    ("name", "own", "shadow", "agree", "differences"), COMPARISONS, ids=[c[0] for c in COMPARISONS]
)
def test_comparing_predictions(
    name: str, own: Any, shadow: Any, agree: bool, differences: tuple[float, ...]
) -> None:
    assert compare(own, shadow, TOLERANCE) == Comparison(agree, differences)


def test_a_tolerance_of_zero_is_exact() -> None:
    assert compare([0.1], [0.1], 0).agree
    assert not compare([0.1], [0.1 + 1e-12], 0).agree


def test_a_huge_shadow_answer_is_told_apart_by_its_length_before_it_is_read() -> None:
    assert compare([1], list(range(1_000_000)), TOLERANCE) == Comparison(False)
    assert compare([[1, 2]], [list(range(1_000_000))], TOLERANCE) == Comparison(False)


def test_deeply_nested_answers_never_raise() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert compare({"a": deep}, {"a": deep}, TOLERANCE) in (Comparison(True), Comparison(False))


# --- the bounded label set ---------------------------------------------------------------------


def test_the_first_labels_are_counted_by_name_the_rest_as_other() -> None:
    cap = LabelCap(limit=3)
    assert [cap.name(label) for label in ["a", "b", "a", "c", "d", "b", "e"]] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        "b",
        OTHER,
    ]


def test_a_long_label_is_cut() -> None:
    assert LabelCap().name("x" * 1000) == "x" * 64


# --- the settings ------------------------------------------------------------------------------


def config(**env: str) -> ServingConfig:
    return ServingConfig.from_env({"MODEL_URI": "models:/m/1", **env})


def test_no_shadow_by_default() -> None:
    assert config().shadow is None
    assert (
        config(ALIASROLL_SHADOW_URL="http://m-shadow.ns.svc:8080", ALIASROLL_SHADOW_PERCENT="0").shadow
        is None
    )


def test_the_shadow_settings() -> None:
    shadow = config(
        ALIASROLL_SHADOW_URL="http://m-shadow.ns.svc:8080/",
        ALIASROLL_SHADOW_PERCENT="12.5",
        ALIASROLL_SHADOW_QUEUE="8",
        ALIASROLL_SHADOW_QUEUE_BYTES="1000",
        ALIASROLL_SHADOW_CONCURRENCY="2",
        ALIASROLL_SHADOW_TIMEOUT_SECONDS="0.5",
        ALIASROLL_SHADOW_MAX_ANSWER_BYTES="4096",
        ALIASROLL_SHADOW_TOLERANCE="0.01",
    ).shadow
    assert shadow == ShadowConfig(
        host="m-shadow.ns.svc",
        port=8080,
        path="/invocations",
        percent=12.5,
        queue=8,
        queue_bytes=1000,
        concurrency=2,
        timeout_seconds=0.5,
        max_answer_bytes=4096,
        tolerance=0.01,
    )
    assert shadow.authority == "m-shadow.ns.svc:8080"


def test_the_shadow_defaults() -> None:
    shadow = config(ALIASROLL_SHADOW_URL="http://shadow/prefix").shadow
    assert shadow == ShadowConfig(host="shadow", port=80, path="/prefix/invocations")
    assert (shadow.percent, shadow.queue, shadow.concurrency, shadow.timeout_seconds) == (100.0, 64, 4, 5.0)
    assert (shadow.max_answer_bytes, shadow.queue_bytes, shadow.tolerance) == (4 << 20, 64 << 20, 1e-6)
    assert shadow.authority == "shadow"
    assert config(ALIASROLL_SHADOW_URL="http://[fd00::1]:8080").shadow == ShadowConfig(
        host="fd00::1", port=8080, path="/invocations"
    )
    assert ShadowConfig(host="fd00::1", port=8080, path="/").authority == "[fd00::1]:8080"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALIASROLL_SHADOW_URL": "https://shadow"}, "give http://<host>[:<port>]"),
        ({"ALIASROLL_SHADOW_URL": "shadow:8080"}, "give http://<host>[:<port>]"),
        ({"ALIASROLL_SHADOW_URL": "http://u:p@shadow"}, "no credentials"),
        ({"ALIASROLL_SHADOW_URL": "http://shadow:99999"}, "is not a URL"),
        ({"ALIASROLL_SHADOW_URL": "http://s", "ALIASROLL_SHADOW_PERCENT": "101"}, "between 0 and 100"),
        ({"ALIASROLL_SHADOW_URL": "http://s", "ALIASROLL_SHADOW_PERCENT": "nan"}, "between 0 and 100"),
        ({"ALIASROLL_SHADOW_URL": "http://s", "ALIASROLL_SHADOW_QUEUE": "0"}, "ALIASROLL_SHADOW_QUEUE='0'"),
        ({"ALIASROLL_SHADOW_URL": "http://s", "ALIASROLL_SHADOW_TIMEOUT_SECONDS": "0"}, "TIMEOUT_SECONDS"),
        ({"ALIASROLL_SHADOW_URL": "http://s", "ALIASROLL_SHADOW_TOLERANCE": "-1"}, "TOLERANCE"),
        ({"ALIASROLL_MIRROR_TOKEN": "short"}, "ALIASROLL_MIRROR_TOKEN must be"),
        ({"ALIASROLL_MIRROR_TOKEN": "a token with spaces"}, "ALIASROLL_MIRROR_TOKEN must be"),
        ({"ALIASROLL_PREDICTION_BUCKETS": "1,0"}, "each larger than the one before"),
        ({"ALIASROLL_PREDICTION_BUCKETS": "0,inf"}, "finite"),
        ({"ALIASROLL_PREDICTION_BUCKETS": "a"}, "numbers separated by commas"),
    ],
)
def test_bad_shadow_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config(**env)


def test_prediction_buckets() -> None:
    assert config(ALIASROLL_PREDICTION_BUCKETS="-1, 0,0.5,10").prediction_buckets == (-1.0, 0.0, 0.5, 10.0)
    assert config().prediction_buckets[:5] == (-1000.0, -100.0, -10.0, -1.0, 0.0)
