"""The judge: every branch of pass, fail and inconclusive, with the values and bound it names."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from aliasroll.analysis.judge import Limits, Verdict, judge
from aliasroll.analysis.window import Window

FAST_P99 = 0.01 * 0.99  # every request in the lowest bucket (0, 10 ms]
SLOW_P99 = 0.01 + 0.49 * 0.99  # every request in (10 ms, 500 ms]


def window(requests: int, errors: int = 0, *, slow: bool = False) -> Window:
    """`requests` answers, `errors` of them 5xx, all fast (under 10 ms) or all slow (10 to 500 ms)."""
    return Window(
        requests=requests,
        errors=errors,
        buckets=((0.01, 0 if slow else requests), (0.5, requests), (math.inf, requests)),
    )


@dataclass(frozen=True)
class Case:
    limits: Limits
    canary: Window
    production: Window
    verdict: Verdict
    # Per metric: (verdict, bound kind, bound) in the order errorRate, latencyP99.
    metrics: tuple[tuple[str, Verdict, str | None, float | None], ...]
    said: tuple[str, ...] = ()  # fragments the message must contain


ERRORS_ABS = Limits(min_canary_requests=50, max_error_percent=1.0)
ERRORS_REL = Limits(min_canary_requests=50, max_error_increase_points=2.0)
ERRORS_BOTH = Limits(min_canary_requests=50, max_error_percent=5.0, max_error_increase_points=2.0)
P99_ABS = Limits(min_canary_requests=50, max_p99_seconds=0.2)
P99_REL = Limits(min_canary_requests=50, max_p99_ratio=1.5)
EVERYTHING = Limits(
    min_canary_requests=50,
    max_error_percent=5.0,
    max_error_increase_points=2.0,
    max_p99_seconds=0.2,
    max_p99_ratio=1.5,
)

CASES = {
    # Too little canary traffic: never judged.
    "canary below min requests is inconclusive, even with every request failing": Case(
        EVERYTHING,
        window(49, errors=49, slow=True),
        window(1000),
        Verdict.INCONCLUSIVE,
        (),
        ("too little canary traffic", "canary 49 requests", "at least 50"),
    ),
    "no canary requests with a minimum of zero is inconclusive": Case(
        Limits(min_canary_requests=0, max_error_percent=1.0),
        window(0),
        window(1000),
        Verdict.INCONCLUSIVE,
        (),
        ("at least 1 canary requests",),
    ),
    # Error rate, absolute.
    "error rate under the absolute bound passes": Case(
        ERRORS_ABS,
        window(200, errors=2),
        window(1000, errors=50),
        Verdict.PASSED,
        (("errorRate", Verdict.PASSED, "absolute", 1.0),),
        ("canary error rate 1.00%", "<= limit 1.00% (absolute)"),
    ),
    "error rate over the absolute bound fails": Case(
        ERRORS_ABS,
        window(200, errors=3),
        window(1000),
        Verdict.FAILED,
        (("errorRate", Verdict.FAILED, "absolute", 1.0),),
        ("canary error rate 1.50% (production 0.00%) > limit 1.00% (absolute)",),
    ),
    # Error rate, relative to production.
    "error rate within production's plus N points passes": Case(
        ERRORS_REL,
        window(100, errors=6),
        window(1000, errors=50),
        Verdict.PASSED,
        (("errorRate", Verdict.PASSED, "relative", 7.0),),
        ("canary error rate 6.00% (production 5.00%) <= limit 7.00% = production + 2 points (relative)",),
    ),
    "error rate beyond production's plus N points fails": Case(
        ERRORS_REL,
        window(100, errors=8),
        window(1000, errors=50),
        Verdict.FAILED,
        (("errorRate", Verdict.FAILED, "relative", 7.0),),
        ("> limit 7.00% = production + 2 points (relative)",),
    ),
    "both error bounds: the stricter (relative) applies": Case(
        ERRORS_BOTH,
        window(100, errors=3),
        window(1000, errors=0),
        Verdict.FAILED,
        (("errorRate", Verdict.FAILED, "relative", 2.0),),
        ("> limit 2.00% = production + 2 points (relative)",),
    ),
    "both error bounds: the stricter (absolute) applies": Case(
        ERRORS_BOTH,
        window(100, errors=5),
        window(1000, errors=40),
        Verdict.PASSED,
        (("errorRate", Verdict.PASSED, "absolute", 5.0),),
        ("<= limit 5.00% (absolute)",),
    ),
    # Relative bounds skipped: production too quiet to compare with.
    "relative error bound skipped when production is quiet; the absolute one still fails": Case(
        ERRORS_BOTH,
        window(100, errors=6),
        window(10),
        Verdict.FAILED,
        (("errorRate", Verdict.FAILED, "absolute", 5.0),),
        (
            "> limit 5.00% (absolute; the relative bound is skipped)",
            "relative bound skipped: production answered 10 requests (fewer than 50)",
        ),
    ),
    "relative error bound skipped when production is quiet; the absolute one passes": Case(
        ERRORS_BOTH,
        window(100, errors=1),
        window(10, errors=10),
        Verdict.PASSED,
        (("errorRate", Verdict.PASSED, "absolute", 5.0),),
        ("skipped",),
    ),
    "only a relative bound, skipped: inconclusive, not passed": Case(
        ERRORS_REL,
        window(100, errors=0),
        window(0),
        Verdict.INCONCLUSIVE,
        (("errorRate", Verdict.INCONCLUSIVE, None, None),),
        ("no bound applies to the error rate", "production answered 0 requests"),
    ),
    # p99 latency, absolute.
    "p99 under the absolute bound passes": Case(
        P99_ABS,
        window(100),
        window(1000, slow=True),
        Verdict.PASSED,
        (("latencyP99", Verdict.PASSED, "absolute", 0.2),),
        ("canary p99 latency 9.9 ms", "<= limit 200 ms (absolute)"),
    ),
    "p99 over the absolute bound fails": Case(
        P99_ABS,
        window(100, slow=True),
        window(1000),
        Verdict.FAILED,
        (("latencyP99", Verdict.FAILED, "absolute", 0.2),),
        ("canary p99 latency 495 ms (production 9.9 ms) > limit 200 ms (absolute)",),
    ),
    # p99 latency, relative to production.
    "p99 within production's times F passes": Case(
        P99_REL,
        window(100, slow=True),
        window(1000, slow=True),
        Verdict.PASSED,
        (("latencyP99", Verdict.PASSED, "relative", SLOW_P99 * 1.5),),
        ("<= limit 743 ms = production x 1.5 (relative)",),
    ),
    "p99 beyond production's times F fails": Case(
        P99_REL,
        window(100, slow=True),
        window(1000),
        Verdict.FAILED,
        (("latencyP99", Verdict.FAILED, "relative", FAST_P99 * 1.5),),
        ("> limit 14.9 ms = production x 1.5 (relative)",),
    ),
    "relative p99 bound skipped when production is quiet: inconclusive": Case(
        P99_REL,
        window(100, slow=True),
        window(3),
        Verdict.INCONCLUSIVE,
        (("latencyP99", Verdict.INCONCLUSIVE, None, None),),
        ("production answered 3 requests (fewer than 50)", "skipped"),
    ),
    "relative p99 bound skipped when production has no histogram: inconclusive": Case(
        P99_REL,
        window(100),
        Window(requests=1000, errors=0, buckets=()),
        Verdict.INCONCLUSIVE,
        (("latencyP99", Verdict.INCONCLUSIVE, None, None),),
        ("production has no latency histogram",),
    ),
    "canary without a histogram: its p99 is unknown, inconclusive": Case(
        P99_ABS,
        Window(requests=100, errors=0, buckets=()),
        window(1000),
        Verdict.INCONCLUSIVE,
        (("latencyP99", Verdict.INCONCLUSIVE, None, None),),
        ("canary p99 latency unknown",),
    ),
    # Both metrics.
    "both metrics pass: passed": Case(
        EVERYTHING,
        window(100, errors=1),
        window(1000, errors=5),
        Verdict.PASSED,
        (
            ("errorRate", Verdict.PASSED, "relative", 2.5),
            ("latencyP99", Verdict.PASSED, "relative", FAST_P99 * 1.5),
        ),
        ("canary 100 requests, production 1000",),
    ),
    "errors pass, latency fails: failed": Case(
        EVERYTHING,
        window(100, errors=1, slow=True),
        window(1000, errors=5),
        Verdict.FAILED,
        (
            ("errorRate", Verdict.PASSED, "relative", 2.5),
            ("latencyP99", Verdict.FAILED, "relative", FAST_P99 * 1.5),
        ),
    ),
    "errors fail, latency passes: failed": Case(
        EVERYTHING,
        window(100, errors=10),
        window(1000, errors=5),
        Verdict.FAILED,
        (
            ("errorRate", Verdict.FAILED, "relative", 2.5),
            ("latencyP99", Verdict.PASSED, "relative", FAST_P99 * 1.5),
        ),
    ),
    "production quiet: absolute bounds of both metrics still apply": Case(
        EVERYTHING,
        window(100, errors=1, slow=True),
        window(5),
        Verdict.FAILED,
        (
            ("errorRate", Verdict.PASSED, "absolute", 5.0),
            ("latencyP99", Verdict.FAILED, "absolute", 0.2),
        ),
        ("skipped",),
    ),
    "one metric failed and one inconclusive: failed wins": Case(
        Limits(min_canary_requests=50, max_error_percent=1.0, max_p99_ratio=2.0),
        window(100, errors=5),
        window(10),
        Verdict.FAILED,
        (
            ("errorRate", Verdict.FAILED, "absolute", 1.0),
            ("latencyP99", Verdict.INCONCLUSIVE, None, None),
        ),
    ),
    "no bound set: passed on traffic alone": Case(
        Limits(min_canary_requests=50),
        window(100, errors=100),
        window(1000),
        Verdict.PASSED,
        (),
        ("no bound is set",),
    ),
    "exactly at the bound passes (float noise forgiven)": Case(
        Limits(min_canary_requests=10, max_error_percent=0.3),
        Window(requests=1000, errors=3, buckets=()),
        window(1000),
        Verdict.PASSED,
        (("errorRate", Verdict.PASSED, "absolute", 0.3),),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_judge(case: Case) -> None:
    measurement = judge(case.limits, canary=case.canary, production=case.production)
    assert measurement.verdict is case.verdict
    got = tuple((m.metric, m.verdict, m.bound_kind, m.bound) for m in measurement.metrics)
    assert len(got) == len(case.metrics), measurement.message
    for (metric, verdict, kind, bound), expected in zip(got, case.metrics, strict=True):
        assert (metric, verdict, kind) == expected[:3], measurement.message
        assert bound == pytest.approx(expected[3]), measurement.message
    for fragment in case.said:
        assert fragment in measurement.message
    assert measurement.canary_requests == case.canary.requests
    assert measurement.production_requests == case.production.requests
    assert "\n" not in measurement.summary()


def test_metric_values_are_the_measured_ones() -> None:
    measurement = judge(
        EVERYTHING, canary=window(200, errors=4, slow=True), production=window(1000, errors=10)
    )
    errors, latency = measurement.metrics
    assert (errors.canary, errors.production) == (pytest.approx(2.0), pytest.approx(1.0))
    assert (latency.canary, latency.production) == (pytest.approx(SLOW_P99), pytest.approx(FAST_P99))


def test_status_is_small_camel_case_and_json() -> None:
    measurement = judge(EVERYTHING, canary=window(100, errors=10), production=window(5))
    status = measurement.to_status()
    assert json.loads(json.dumps(status)) == status
    assert status == {
        "verdict": "Failed",
        "canaryRequests": 100,
        "productionRequests": 5,
        "metrics": [
            # Production's figures are left out where they were too few to compare with.
            {
                "metric": "errorRate",
                "verdict": "Failed",
                "canary": 10.0,
                "bound": 5.0,
                "boundKind": "absolute",
                "relativeSkipped": True,
            },
            {
                "metric": "latencyP99",
                "verdict": "Passed",
                "canary": 0.0099,
                "bound": 0.2,
                "boundKind": "absolute",
                "relativeSkipped": True,
            },
        ],
        "message": measurement.message,
    }


def test_summary_names_the_verdict_values_and_bounds() -> None:
    measurement = judge(ERRORS_ABS, canary=window(200, errors=3), production=window(1000))
    assert measurement.summary() == (
        "Failed: canary error rate 1.50% (production 0.00%) > limit 1.00% (absolute); "
        "canary 200 requests, production 1000"
    )


def test_inconclusive_status_has_no_metrics() -> None:
    status = judge(ERRORS_ABS, canary=window(3), production=window(1000)).to_status()
    assert status["verdict"] == "Inconclusive"
    assert status["metrics"] == []
