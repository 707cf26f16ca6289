"""The pod scraper's bookkeeping: baselines, version moves, pods that stop or start answering.

Each "pod" is the serving image's own Metrics object, rendered as its /metrics would render it, behind
an in-process HTTP transport (the real processes are in tests/integration/test_analysis_providers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from aliasroll.analysis import AnalysisTarget, PodEndpoint, PodMetricsProvider, PrometheusProvider
from aliasroll.errors import AnalysisUnavailable
from aliasroll.serving.config import ServingConfig
from aliasroll.serving.metrics import Metrics


class Pods:
    """Serving pods by address: their metrics, and which ones answer."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metrics] = {}
        self.down: set[str] = set()
        self.bodies: dict[str, bytes] = {}
        self.asked: list[str] = []

    def start(self, address: str, version: str) -> Metrics:
        metrics = Metrics(
            ServingConfig(model_uri=f"models:/m/{version}", model_name="m", model_version=version, track="x")
        )
        self.metrics[address] = metrics
        return metrics

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        address = f"[{host}]:{request.url.port}" if ":" in host else f"{host}:{request.url.port}"
        self.asked.append(str(request.url))
        if address in self.down:
            raise httpx2.ConnectError("connection refused", request=request)
        if address in self.bodies:
            return httpx2.Response(200, content=self.bodies[address])
        return httpx2.Response(200, content=self.metrics[address].render())


@pytest.fixture
def pods() -> Pods:
    return Pods()


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


@pytest.fixture
async def provider(pods: Pods, clock: list[float]) -> AsyncIterator[PodMetricsProvider]:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(pods.handler))
    provider = PodMetricsProvider(client=client, clock=lambda: clock[0])
    yield provider
    await provider.aclose()


def target(
    *, production: str = "1", canary: str = "2", canary_pods: tuple[str, ...] = ("10.0.0.2",)
) -> AnalysisTarget:
    return AnalysisTarget(
        key="uid",
        namespace="ns",
        model="m",
        production_version=production,
        canary_version=canary,
        interval_seconds=60,
        production_pods=(PodEndpoint("p0", "10.0.0.1", 8080),),
        canary_pods=tuple(PodEndpoint(f"c{i}", ip, 8080) for i, ip in enumerate(canary_pods)),
    )


def answer(metrics: Metrics, n: int, *, code: int = 200) -> None:
    for _ in range(n):
        metrics.observe(code=code, seconds=0.01)


async def test_first_call_is_a_baseline_then_windows_follow(
    pods: Pods, provider: PodMetricsProvider, clock: list[float]
) -> None:
    production, canary = pods.start("10.0.0.1:8080", "1"), pods.start("10.0.0.2:8080", "2")
    answer(production, 50)
    assert await provider.measure(target()) is None
    answer(production, 7)
    answer(canary, 3, code=503)
    clock[0] += 30
    windows = await provider.measure(target())
    assert windows is not None
    assert (windows.production.requests, windows.canary.requests, windows.canary.errors) == (7, 3, 3)
    assert windows.seconds == 30
    assert windows.unreachable_pods == ()


async def test_a_version_move_takes_a_new_baseline(pods: Pods, provider: PodMetricsProvider) -> None:
    pods.start("10.0.0.1:8080", "1")
    pods.start("10.0.0.2:8080", "2")
    assert await provider.measure(target()) is None
    assert await provider.measure(target()) is not None
    pods.start("10.0.0.2:8080", "3")
    assert await provider.measure(target(canary="3")) is None
    assert await provider.measure(target(canary="3")) is not None


async def test_forget_drops_the_baseline(pods: Pods, provider: PodMetricsProvider) -> None:
    pods.start("10.0.0.1:8080", "1")
    pods.start("10.0.0.2:8080", "2")
    assert await provider.measure(target()) is None
    provider.forget("uid")
    assert await provider.measure(target()) is None


async def test_a_pod_that_misses_a_reading_is_counted_from_where_it_was_last_read(
    pods: Pods, provider: PodMetricsProvider
) -> None:
    pods.start("10.0.0.1:8080", "1")
    first, second = pods.start("10.0.0.2:8080", "2"), pods.start("10.0.0.3:8080", "2")
    watched = target(canary_pods=("10.0.0.2", "10.0.0.3"))
    answer(second, 100)
    assert await provider.measure(watched) is None
    answer(first, 4)
    answer(second, 5)
    pods.down.add("10.0.0.3:8080")
    windows = await provider.measure(watched)
    assert windows is not None
    assert windows.canary.requests == 4  # the silent pod is left out, and named
    assert windows.unreachable_pods == ("c1",)
    pods.down.clear()
    answer(second, 6)
    windows = await provider.measure(watched)
    assert windows is not None
    assert windows.canary.requests == 11  # its 5 + 6 since it was last read, not its 111 since start


async def test_a_pod_of_another_version_is_left_out_without_being_unreachable(
    pods: Pods, provider: PodMetricsProvider
) -> None:
    pods.start("10.0.0.1:8080", "1")
    answer(pods.start("10.0.0.2:8080", "2"), 1)
    answer(pods.start("10.0.0.3:8080", "1"), 1)  # not rolled to the canary's version yet
    watched = target(canary_pods=("10.0.0.2", "10.0.0.3"))
    assert await provider.measure(watched) is None
    windows = await provider.measure(watched)
    assert windows is not None
    assert windows.canary.requests == 0
    assert windows.unreachable_pods == ()


async def test_no_canary_pod_answering_is_unavailable_and_says_why(
    pods: Pods, provider: PodMetricsProvider
) -> None:
    pods.start("10.0.0.1:8080", "1")
    pods.start("10.0.0.2:8080", "2")
    pods.start("10.0.0.3:8080", "2")
    pods.down.add("10.0.0.2:8080")
    pods.bodies["10.0.0.3:8080"] = b"aliasroll_serving_requests_total{ 1\n"
    with pytest.raises(AnalysisUnavailable) as raised:
        await provider.measure(target(canary_pods=("10.0.0.2", "10.0.0.3", "")))
    message = str(raised.value)
    assert message.startswith("none of the 3 canary pods answered GET /metrics: ")
    assert "c0 (http://10.0.0.2:8080/metrics: connection refused)" in message
    assert "c1 (http://10.0.0.3:8080/metrics: not Prometheus exposition text" in message
    assert "c2 (no pod IP yet)" in message
    assert raised.value.transient


async def test_ipv6_pod_addresses_are_bracketed(pods: Pods, provider: PodMetricsProvider) -> None:
    pods.start("10.0.0.1:8080", "1")
    pods.start("[fd00::2]:8080", "2")
    assert await provider.measure(target(canary_pods=("fd00::2",))) is None
    assert "http://[fd00::2]:8080/metrics" in pods.asked


BAD_PROMETHEUS = {
    "no scheme": ("prometheus:9090", None, "give a URL such as http://prometheus:9090"),
    "not a label name": ("http://prometheus:9090", {"kube-namespace": "x"}, "not a Prometheus label name"),
    "a label the analysis sets": ("http://prometheus:9090", {"version": "3"}, "the analysis sets this label"),
}


@pytest.mark.parametrize("case", BAD_PROMETHEUS.values(), ids=BAD_PROMETHEUS.keys())
def test_prometheus_provider_refuses_what_it_cannot_query(
    case: tuple[str, dict[str, str] | None, str],
) -> None:
    address, matchers, message = case
    with pytest.raises(ValueError, match=message):
        PrometheusProvider(address, matchers=matchers)
