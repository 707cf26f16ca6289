"""Windows from the serving pods' counters: parsing the exposition text, per-pod deltas, and the p99
read from the histogram as Prometheus' histogram_quantile reads it."""

from __future__ import annotations

import math

import pytest

from aliasroll.analysis.window import (
    Buckets,
    Counters,
    MetricsFormatError,
    Window,
    counted_since,
    histogram_quantile,
    parse_counters,
    window_between,
)
from aliasroll.serving.config import ServingConfig
from aliasroll.serving.metrics import LATENCY_BUCKETS, Metrics

INF = math.inf


def served(version: str, answers: list[tuple[int, float]], *, model: str = "churn") -> str:
    """The exposition text the serving image renders after answering `answers` (code, seconds)."""
    metrics = Metrics(
        ServingConfig(
            model_uri=f"models:/{model}/{version}", model_name=model, model_version=version, track="canary"
        )
    )
    for code, seconds in answers:
        metrics.observe(code=code, seconds=seconds)
    return metrics.render().decode()


def buckets(*pairs: tuple[float, float]) -> Buckets:
    return tuple(pairs)


# Parsing.


def test_parse_reads_the_serving_image_s_own_text() -> None:
    text = served("3", [(200, 0.004), (200, 0.02), (400, 0.001), (500, 0.3), (503, 0.002)])
    counters = parse_counters(text, model="churn", version="3")
    assert counters is not None
    assert counters.requests == 5  # every answer, 4xx included
    assert counters.errors == 2  # 500 and 503: the server's fault, not the client's
    assert [bound for bound, _ in counters.buckets] == [*LATENCY_BUCKETS, INF]
    cumulative = dict(counters.buckets)
    assert cumulative[0.001] == 1
    assert cumulative[0.0025] == 2
    assert cumulative[0.005] == 3
    assert cumulative[0.025] == 4
    assert cumulative[0.5] == 5
    assert cumulative[INF] == 5


def test_parse_a_fresh_server_has_zero_counts_not_no_series() -> None:
    counters = parse_counters(served("3", []), model="churn", version="3")
    assert counters == Counters(
        requests=0, errors=0, buckets=tuple((b, 0.0) for b in (*LATENCY_BUCKETS, INF))
    )


PARSE_NONE = {
    "another version (a pod not rolled yet)": (served("2", [(200, 0.01)]), "churn", "3"),
    "another model": (served("3", [(200, 0.01)], model="fraud"), "churn", "3"),
    "not a serving pod": ("# TYPE up gauge\nup 1\n", "churn", "3"),
    "empty": ("", "churn", "3"),
}


@pytest.mark.parametrize("case", PARSE_NONE.values(), ids=PARSE_NONE.keys())
def test_parse_no_series_of_that_version_is_none(case: tuple[str, str, str]) -> None:
    text, model, version = case
    assert parse_counters(text, model=model, version=version) is None


def test_parse_only_counts_the_asked_version_when_several_are_present() -> None:
    text = (
        'aliasroll_serving_requests_total{model="m",version="1",track="production",code="200"} 7\n'
        'aliasroll_serving_requests_total{model="m",version="2",track="canary",code="200"} 3\n'
        'aliasroll_serving_requests_total{model="m",version="2",track="canary",code="502"} 1\n'
    )
    assert parse_counters(text, model="m", version="2") == Counters(requests=4, errors=1, buckets=())


def test_parse_counts_requests_from_the_histogram_when_it_is_there() -> None:
    """Every answer is observed once in the histogram, whose series exist from the start whatever the
    code; the code counter's series appear with their first answer."""
    text = (
        'aliasroll_serving_requests_total{model="m",version="2",code="200"} 3\n'
        'aliasroll_serving_requests_total{model="m",version="2",code="500"} 1\n'
        'aliasroll_serving_request_duration_seconds_bucket{model="m",version="2",le="+Inf"} 5\n'
        'aliasroll_serving_request_duration_seconds_count{model="m",version="2"} 5\n'
    )
    assert parse_counters(text, model="m", version="2") == Counters(requests=5, errors=1, buckets=((INF, 5),))


PARSE_ERRORS = {
    "not a number": 'aliasroll_serving_requests_total{model="m",version="1",code="200"} many\n',
    "unclosed labels": 'aliasroll_serving_requests_total{model="m",version="1" 1\n',
    "a bucket without le": 'aliasroll_serving_request_duration_seconds_bucket{model="m",version="1"} 1\n',
}


@pytest.mark.parametrize("text", PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_parse_bad_text_raises_a_format_error(text: str) -> None:
    with pytest.raises(MetricsFormatError, match="not Prometheus exposition text"):
        parse_counters(text, model="m", version="1")


# Windows between two readings.

A0 = Counters(requests=100, errors=2, buckets=buckets((0.1, 90), (1.0, 99), (INF, 100)))
A1 = Counters(requests=150, errors=5, buckets=buckets((0.1, 130), (1.0, 148), (INF, 150)))
B0 = Counters(requests=10, errors=0, buckets=buckets((0.1, 10), (1.0, 10), (INF, 10)))
B1 = Counters(requests=30, errors=1, buckets=buckets((0.1, 25), (1.0, 29), (INF, 30)))
RESTARTED = Counters(requests=4, errors=0, buckets=buckets((0.1, 4), (1.0, 4), (INF, 4)))

WINDOWS = {
    "one pod: the difference": (
        {"a": A0},
        {"a": A1},
        Window(requests=50, errors=3, buckets=buckets((0.1, 40), (1.0, 49), (INF, 50))),
    ),
    "two pods: summed": (
        {"a": A0, "b": B0},
        {"a": A1, "b": B1},
        Window(requests=70, errors=4, buckets=buckets((0.1, 55), (1.0, 68), (INF, 70))),
    ),
    "a new pod counts from zero": (
        {"a": A0},
        {"a": A1, "b": B1},
        Window(requests=80, errors=4, buckets=buckets((0.1, 65), (1.0, 78), (INF, 80))),
    ),
    "a restarted pod (counters went down) counts from zero": (
        {"a": A1},
        {"a": RESTARTED},
        Window(requests=4, errors=0, buckets=buckets((0.1, 4), (1.0, 4), (INF, 4))),
    ),
    "a reset seen in one bucket only is a reset": (
        {"a": A0},
        {"a": Counters(requests=100, errors=2, buckets=buckets((0.1, 80), (1.0, 99), (INF, 100)))},
        Window(requests=100, errors=2, buckets=buckets((0.1, 80), (1.0, 99), (INF, 100))),
    ),
    "a vanished pod contributes nothing": (
        {"a": A0, "b": B0},
        {"a": A1},
        Window(requests=50, errors=3, buckets=buckets((0.1, 40), (1.0, 49), (INF, 50))),
    ),
    "a restarted container under its new key counts from zero, even ending higher (review #15)": (
        {"uid-a/0": A0},
        {"uid-a/1": Counters(requests=120, errors=30, buckets=buckets((0.1, 90), (1.0, 120), (INF, 120)))},
        Window(requests=120, errors=30, buckets=buckets((0.1, 90), (1.0, 120), (INF, 120))),
    ),
    "no pods": ({"a": A0}, {}, Window()),
    "nothing answered in between": (
        {"a": A0},
        {"a": A0},
        Window(0, 0, buckets((0.1, 0), (1.0, 0), (INF, 0))),
    ),
}


@pytest.mark.parametrize("case", WINDOWS.values(), ids=WINDOWS.keys())
def test_window_between(case: tuple[dict[str, Counters], dict[str, Counters], Window]) -> None:
    before, after, expected = case
    assert window_between(before, after) == expected


COUNTED_SINCE = {
    "no earlier reading: all of it": (None, A1, A1),
    "the same container: the difference": (
        A0,
        A1,
        Counters(requests=50, errors=3, buckets=buckets((0.1, 40), (1.0, 49), (INF, 50))),
    ),
    "a counter went down: all of it": (A1, RESTARTED, RESTARTED),
}


@pytest.mark.parametrize("case", COUNTED_SINCE.values(), ids=COUNTED_SINCE.keys())
def test_counted_since(case: tuple[Counters | None, Counters, Counters]) -> None:
    then, now, expected = case
    assert counted_since(then, now) == expected


# Error rate and p99.


def test_error_percent() -> None:
    assert Window(requests=200, errors=3).error_percent == pytest.approx(1.5)
    assert Window(requests=0, errors=0).error_percent is None


QUANTILES: dict[str, tuple[float, Buckets, float | None]] = {
    # rank 0.99 x 100 = 99 falls in (0.1, 0.25]: 90 below it, 10 in it -> 0.1 + 0.15 x 9/10.
    "interpolated inside the bucket": (0.99, buckets((0.1, 90), (0.25, 100), (INF, 100)), 0.235),
    "the lowest bucket starts at zero": (0.5, buckets((0.1, 100), (INF, 100)), 0.05),
    "a rank in +Inf answers the highest finite bound": (0.99, buckets((0.1, 50), (1.0, 90), (INF, 100)), 1.0),
    "a rank on a bucket's edge answers its bound": (0.9, buckets((0.1, 90), (1.0, 100), (INF, 100)), 0.1),
    "empty buckets below are passed over": (
        0.99,
        buckets((0.001, 0), (0.01, 0), (0.1, 0), (1.0, 100), (INF, 100)),
        0.1 + 0.9 * 0.99,
    ),
    "non-monotonic counts are made monotonic": (
        0.5,
        buckets((0.1, 60), (0.5, 50), (INF, 100)),
        0.1 * 50 / 60,
    ),
    "no observations: NaN, so None": (0.99, buckets((0.1, 0), (INF, 0)), None),
    "no +Inf bucket: NaN, so None": (0.99, buckets((0.1, 5), (1.0, 10)), None),
    "only +Inf: NaN, so None": (0.99, buckets((INF, 10)), None),
    "unsorted input is sorted first": (0.99, ((INF, 100), (0.25, 100), (0.1, 90)), 0.235),
}


@pytest.mark.parametrize("case", QUANTILES.values(), ids=QUANTILES.keys())
def test_histogram_quantile(case: tuple[float, Buckets, float | None]) -> None:
    q, given, expected = case
    answer = histogram_quantile(q, given)
    if expected is None:
        assert answer is None
    else:
        assert answer == pytest.approx(expected)


def test_p99_of_a_window() -> None:
    window = Window(requests=100, errors=0, buckets=buckets((0.1, 90), (0.25, 100), (INF, 100)))
    assert window.p99_seconds == pytest.approx(0.235)
    assert Window().p99_seconds is None
