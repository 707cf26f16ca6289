"""The Prometheus provider's queries and answers, against a scripted Prometheus API: the selectors it
sends (the resource's namespace, the user's matchers), when it evaluates them, and what a canary
Prometheus has no sample of becomes (never a pass). The real Prometheus is in
tests/integration/test_analysis_providers.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx2
import pytest

from aliasroll.analysis import AnalysisTarget, Limits, PrometheusProvider, Verdict, judge
from aliasroll.errors import AnalysisUnavailable

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
COUNT = "aliasroll_serving_request_duration_seconds_count"
BUCKET = "aliasroll_serving_request_duration_seconds_bucket"


@dataclass
class Scripted:
    """A Prometheus API that answers each query with the increase it is given per version."""

    requests: dict[str, float] = field(default_factory=lambda: {"1": 1000.0, "2": 100.0})
    errors: dict[str, float] = field(default_factory=dict)
    asked: list[dict[str, str]] = field(default_factory=list)

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        form = {key: values[0] for key, values in parse_qs(request.content.decode()).items()}
        self.asked.append(form)
        query = form["query"]
        result: list[dict[str, Any]] = []
        if COUNT in query:
            result = [self._sample(value, version=v) for v, value in self.requests.items()]
        elif "requests_total" in query:
            result = [self._sample(value, version=v) for v, value in self.errors.items()]
        else:
            for version, value in self.requests.items():
                result += [
                    self._sample(value, version=version, le="0.1"),
                    self._sample(value, version=version, le="+Inf"),
                ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return httpx2.Response(200, json=body)

    @staticmethod
    def _sample(value: float, **labels: str) -> dict[str, Any]:
        return {"metric": labels, "value": [NOW.timestamp(), str(value)]}


@pytest.fixture
def scripted() -> Scripted:
    return Scripted()


def provider_for(
    scripted: Scripted, *, matchers: Mapping[str, str] | None = None, namespace_label: str = "namespace"
) -> PrometheusProvider:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(scripted.handler))
    return PrometheusProvider(
        "http://prometheus:9090", matchers=matchers, namespace_label=namespace_label, client=client
    )


@pytest.fixture
async def closing() -> AsyncIterator[list[PrometheusProvider]]:
    providers: list[PrometheusProvider] = []
    yield providers
    for provider in providers:
        await provider.aclose()


def target(*, read_at: datetime | None = NOW) -> AnalysisTarget:
    return AnalysisTarget(
        key="uid",
        namespace="ml",
        model="m",
        production_version="1",
        canary_version="2",
        interval_seconds=60,
        read_at=read_at,
    )


# (the user's matchers, namespace_label, the selector every query carries)
SELECTORS = {
    "the resource's namespace by default": ({}, "namespace", '{model="m",version=~"1|2",namespace="ml"}'),
    "the namespace under another label name": (
        {},
        "kubernetes_namespace",
        '{model="m",version=~"1|2",kubernetes_namespace="ml"}',
    ),
    "no namespace matcher": ({}, "", '{model="m",version=~"1|2"}'),
    "the user's own matcher on the namespace label wins": (
        {"namespace": "shared"},
        "namespace",
        '{model="m",version=~"1|2",namespace="shared"}',
    ),
    "the user's matchers beside the namespace": (
        {"job": "models"},
        "namespace",
        '{model="m",version=~"1|2",job="models",namespace="ml"}',
    ),
}


@pytest.mark.parametrize("case", SELECTORS.values(), ids=SELECTORS.keys())
async def test_every_query_selects_the_namespace_and_the_user_s_matchers(
    case: tuple[dict[str, str], str, str], scripted: Scripted, closing: list[PrometheusProvider]
) -> None:
    matchers, label, selector = case
    provider = provider_for(scripted, matchers=matchers, namespace_label=label)
    closing.append(provider)
    await provider.measure(target())
    queries = sorted(form["query"] for form in scripted.asked)
    errors = selector[:-1] + ',code=~"5.."}'
    assert queries == sorted(
        [
            f"sum by (version) (increase({COUNT}{selector}[60s]))",
            f"sum by (version) (increase(aliasroll_serving_requests_total{errors}[60s]))",
            f"sum by (version, le) (increase({BUCKET}{selector}[60s]))",
        ]
    )


async def test_queries_are_evaluated_at_the_reading_time_and_the_window_ends_there(
    scripted: Scripted, closing: list[PrometheusProvider]
) -> None:
    provider = provider_for(scripted)
    closing.append(provider)
    windows = await provider.measure(target())
    assert {form.get("time") for form in scripted.asked} == {f"{NOW.timestamp():.3f}"}
    assert windows.since == NOW - timedelta(seconds=60)
    assert windows.seconds == 60
    scripted.asked.clear()
    windows = await provider.measure(target(read_at=None))  # no reading time: Prometheus' own now
    assert {form.get("time") for form in scripted.asked} == {None}
    assert windows.since is None


LIMITS = Limits(min_canary_requests=20, max_error_percent=1.0)

# (the canary's increase: None for no series at all, the verdict, what the message adds)
CANARY_SAMPLES = {
    "no sample of the canary's series: no canary traffic, Inconclusive, and why (never a pass)": (
        None,
        Verdict.INCONCLUSIVE,
        'has no samples of aliasroll_serving_request_duration_seconds_count{model="m",version="2",'
        'namespace="ml"} over the last 60 s, counted as no canary traffic',
    ),
    "a canary series that did not grow: Inconclusive, nothing to add": (0.0, Verdict.INCONCLUSIVE, None),
    "canary traffic: judged": (100.0, Verdict.PASSED, None),
}


@pytest.mark.parametrize("case", CANARY_SAMPLES.values(), ids=CANARY_SAMPLES.keys())
async def test_a_canary_prometheus_has_no_sample_of_is_never_a_pass(
    case: tuple[float | None, Verdict, str | None], scripted: Scripted, closing: list[PrometheusProvider]
) -> None:
    canary, verdict, caveat = case
    scripted.requests = {"1": 1000.0} if canary is None else {"1": 1000.0, "2": canary}
    provider = provider_for(scripted)
    closing.append(provider)
    windows = await provider.measure(target())
    assert windows is not None  # a measurement, not a baseline the step could go on without
    assert judge(LIMITS, canary=windows.canary, production=windows.production).verdict is verdict
    if caveat is None:
        assert windows.caveat is None
    else:
        assert windows.caveat is not None
        assert caveat in windows.caveat


NO_PRODUCTION = {
    "the namespace matcher is named, with how to change it": (
        "namespace",
        'version="1",namespace="ml"} over the last 60 s',
        "set analysis.prometheus.namespaceLabel to the label your Prometheus puts the pods' namespace in, "
        'or "" for none',
    ),
    "no namespace matcher: nothing to say of it": ("", 'version="1"} over the last 60 s', None),
}


@pytest.mark.parametrize("case", NO_PRODUCTION.values(), ids=NO_PRODUCTION.keys())
async def test_no_production_sample_is_unavailable_and_says_what_to_check(
    case: tuple[str, str, str | None], scripted: Scripted, closing: list[PrometheusProvider]
) -> None:
    label, series, hint = case
    scripted.requests = {}
    provider = provider_for(scripted, namespace_label=label)
    closing.append(provider)
    with pytest.raises(AnalysisUnavailable) as raised:
        await provider.measure(target())
    message = str(raised.value)
    assert series in message
    if hint is None:
        assert "namespaceLabel" not in message
    else:
        assert hint in message


BAD_NAMESPACE_LABELS = {
    "not a label name": ("kube-namespace", "not a Prometheus label name"),
    "a label the analysis sets": ("version", "the analysis sets this label itself"),
}


@pytest.mark.parametrize("case", BAD_NAMESPACE_LABELS.values(), ids=BAD_NAMESPACE_LABELS.keys())
def test_a_namespace_label_the_queries_cannot_use_is_refused(case: tuple[str, str]) -> None:
    label, message = case
    with pytest.raises(ValueError, match=message):
        PrometheusProvider("http://prometheus:9090", namespace_label=label)


async def test_a_bake_s_reading_of_its_version_alone_needs_no_production_sample(
    scripted: Scripted, closing: list[PrometheusProvider]
) -> None:
    # A bake (spec.rollback.bake) measures the new production alone: the warm version it left takes
    # no requests, so Prometheus has no sample of it and none is asked for.
    scripted.requests = {"2": 100.0}
    scripted.errors = {"2": 9.0}
    provider = provider_for(scripted, namespace_label="")
    closing.append(provider)
    alone = AnalysisTarget(
        key="uid/bake",
        namespace="ml",
        model="m",
        production_version="",
        canary_version="2",
        interval_seconds=60,
    )
    windows = await provider.measure(alone)
    assert all('version=~"2"' in form["query"] for form in scripted.asked)
    assert windows.production.requests == 0
    measured = judge(
        Limits(min_canary_requests=20, max_error_percent=1.0, max_error_increase_points=0.5),
        canary=windows.canary,
        production=windows.production,
    )
    assert measured.verdict is Verdict.FAILED
    assert "relative bound skipped" in measured.message
