"""The pod scraper's bookkeeping: baselines, version moves, pods that stop or start answering, are
left out of a reading or restart: every container's requests are counted exactly once.

Each "pod" is the serving image's own Metrics object, rendered as its /metrics would render it, behind
an in-process HTTP transport (the real processes are in tests/integration/test_analysis_providers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from aliasroll.analysis import AnalysisTarget, PodEndpoint, PodMetricsProvider, PrometheusProvider
from aliasroll.analysis.pods import FORGET_AFTER_INTERVALS
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
    assert "c0 (http://10.0.0.2:8080/metrics could not be connected to)" in message
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


# Every container's requests counted exactly once, whatever the pods do between readings. Each case
# is a series of readings of the canary's pods (production: one pod that answers steadily), and the
# canary's window at each reading after the first: (requests, errors, the reading it counts from).

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seen:
    """One canary pod at one reading: what its /metrics says and what the watch says of it."""

    requests: int = 0
    errors: int = 0
    container: str = "0/docker://a"  # restartCount/containerID, as the analyzer reads them from the status
    state: str = "ready"  # ready: measured; unready: listed but not measured; down: /metrics refuses


def seen(requests: int, errors: int = 0, *, container: str = "0/docker://a", state: str = "ready") -> Seen:
    return Seen(requests, errors, container, state)


@dataclass(frozen=True)
class Flow:
    # (seconds since the reading before, the canary pods the watch lists): a pod not named is not listed.
    readings: tuple[tuple[float, Mapping[str, Seen]], ...]
    windows: tuple[tuple[float, float, int], ...]


def every(seconds: float, *pods: Mapping[str, Seen]) -> tuple[tuple[float, Mapping[str, Seen]], ...]:
    return tuple((seconds, p) for p in pods)


RESTARTED = "1/docker://b"
FORGET = FORGET_AFTER_INTERVALS * 60 + 1  # target() measures every 60 s

FLOWS = {
    "a pod that keeps answering: what it answered since the reading before": Flow(
        every(30, {"c0": seen(100)}, {"c0": seen(150, 5)}, {"c0": seen(160, 5)}),
        ((50, 5, 0), (10, 0, 1)),
    ),
    "a pod not Ready at one reading keeps its baseline, not counted from zero when back (review #8)": Flow(
        every(
            30,
            {"c0": seen(10000, 90), "c1": seen(10000, 90)},
            {"c0": seen(10100, 90), "c1": seen(10100, 90, state="unready")},
            {"c0": seen(10200, 100), "c1": seen(10200, 90)},
        ),
        ((100, 0, 0), (300, 10, 0)),
    ),
    "a pod left out of the listing for a reading keeps its baseline": Flow(
        every(
            30,
            {"c0": seen(10000, 90), "c1": seen(10000, 90)},
            {"c0": seen(10100, 90)},
            {"c0": seen(10200, 100), "c1": seen(10200, 90)},
        ),
        ((100, 0, 0), (300, 10, 0)),
    ),
    "a pod whose /metrics did not answer keeps its baseline": Flow(
        every(
            30,
            {"c0": seen(100), "c1": seen(100)},
            {"c0": seen(110), "c1": seen(150, state="down")},
            {"c0": seen(120), "c1": seen(160)},
        ),
        ((10, 0, 0), (70, 0, 0)),
    ),
    "a restarted container ending higher than before counts from zero (review #15)": Flow(
        every(30, {"c0": seen(40, 0)}, {"c0": seen(120, 30, container=RESTARTED)}),
        ((120, 30, 0),),
    ),
    "a restarted container ending lower counts from zero": Flow(
        every(30, {"c0": seen(50)}, {"c0": seen(20, 5, container=RESTARTED)}),
        ((20, 5, 0),),
    ),
    "a container restarted while not Ready counts from zero, from the reading it was last read at": Flow(
        every(
            30,
            {"c0": seen(100), "c1": seen(100)},
            {"c0": seen(200), "c1": seen(150, state="unready")},
            {"c0": seen(300), "c1": seen(30, 3, container=RESTARTED)},
        ),
        ((100, 0, 0), (130, 3, 0)),
    ),
    "a new pod counts from zero": Flow(
        every(30, {"c0": seen(100)}, {"c0": seen(150), "c1": seen(7, 1)}),
        ((57, 1, 0),),
    ),
    "a restart the watch shows one reading late is counted once": Flow(
        every(30, {"c0": seen(100)}, {"c0": seen(30)}, {"c0": seen(50, container=RESTARTED)}),
        ((30, 0, 0), (20, 0, 1)),
    ),
    "a restart the watch shows two readings late is counted once": Flow(
        every(
            30, {"c0": seen(100)}, {"c0": seen(30)}, {"c0": seen(50)}, {"c0": seen(70, container=RESTARTED)}
        ),
        ((30, 0, 0), (20, 0, 1), (20, 0, 2)),
    ),
    "without a container identity, a counter going down is a restart": Flow(
        every(30, {"c0": seen(100, container="")}, {"c0": seen(30, 2, container="")}),
        ((30, 2, 0),),
    ),
    "a pod not Ready for longer than the forget bound keeps its baseline while it exists": Flow(
        (
            (0, {"c0": seen(100), "c1": seen(100)}),
            (FORGET, {"c0": seen(200), "c1": seen(120, state="unready")}),
            (30, {"c0": seen(300), "c1": seen(150)}),
        ),
        ((100, 0, 0), (150, 0, 0)),
    ),
    "a pod gone from every listing for longer than the forget bound is forgotten (it was deleted)": Flow(
        (
            (0, {"c0": seen(100), "c1": seen(100)}),
            (FORGET, {"c0": seen(200)}),
            (30, {"c0": seen(300), "c1": seen(150)}),
        ),
        ((100, 0, 0), (250, 0, 1)),
    ),
}


def body(version: str, requests: int, errors: int) -> bytes:
    """A serving pod's /metrics with these lifetime counts for model m at `version`."""
    labels = f'model="m",version="{version}"'
    lines = [
        "# TYPE aliasroll_serving_requests_total counter",
        f'aliasroll_serving_requests_total{{{labels},code="200"}} {requests - errors}',
        f'aliasroll_serving_requests_total{{{labels},code="500"}} {errors}',
        "# TYPE aliasroll_serving_request_duration_seconds histogram",
        f'aliasroll_serving_request_duration_seconds_bucket{{{labels},le="0.1"}} {requests}',
        f'aliasroll_serving_request_duration_seconds_bucket{{{labels},le="+Inf"}} {requests}',
        f"aliasroll_serving_request_duration_seconds_count{{{labels}}} {requests}",
        f"aliasroll_serving_request_duration_seconds_sum{{{labels}}} 1",
    ]
    return ("\n".join(lines) + "\n").encode()


def flow_target(reading: int, pods_seen: Mapping[str, Seen], read_at: datetime) -> AnalysisTarget:
    measured = tuple(
        PodEndpoint(name, f"10.0.1.{int(name[1:]) + 1}", 8080, uid=f"uid-{name}", container=pod.container)
        for name, pod in sorted(pods_seen.items())
        if pod.state != "unready"
    )
    return replace(
        target(),
        production_pods=(PodEndpoint("p0", "10.0.0.1", 8080, uid="uid-p0", container="0/docker://p"),),
        canary_pods=measured,
        unmeasured_pods=frozenset(f"uid-{name}" for name, pod in pods_seen.items() if pod.state == "unready"),
        read_at=read_at,
    )


@pytest.mark.parametrize("flow", FLOWS.values(), ids=FLOWS.keys())
async def test_each_container_s_requests_are_counted_once(
    flow: Flow, pods: Pods, provider: PodMetricsProvider, clock: list[float]
) -> None:
    times: list[datetime] = []
    windows = []
    for index, (after, pods_seen) in enumerate(flow.readings):
        clock[0] += after
        times.append((times[-1] if times else T0) + timedelta(seconds=after))
        pods.bodies["10.0.0.1:8080"] = body("1", 1000 * (index + 1), 0)
        pods.down.clear()
        for name, pod in pods_seen.items():
            address = f"10.0.1.{int(name[1:]) + 1}:8080"
            pods.bodies[address] = body("2", pod.requests, pod.errors)
            if pod.state == "down":
                pods.down.add(address)
        windows.append(await provider.measure(flow_target(index, pods_seen, times[-1])))
    assert windows[0] is None  # the first reading is a baseline, not a measurement
    measured = []
    for index, window in enumerate(windows[1:], start=1):
        assert window is not None
        assert window.since is not None
        since = times.index(window.since)
        assert window.seconds == (times[index] - times[since]).total_seconds()
        measured.append((window.canary.requests, window.canary.errors, since))
    assert measured == list(flow.windows)


async def test_what_is_kept_is_bounded_by_the_pods_that_exist(
    pods: Pods, provider: PodMetricsProvider, clock: list[float]
) -> None:
    churned = {f"c{i}": seen(10) for i in range(40)}
    for name, pod in churned.items():
        pods.bodies[f"10.0.1.{int(name[1:]) + 1}:8080"] = body("2", pod.requests, pod.errors)
    pods.bodies["10.0.0.1:8080"] = body("1", 10, 0)
    assert await provider.measure(flow_target(0, churned, T0)) is None
    for reading in range(1, FORGET_AFTER_INTERVALS + 2):
        clock[0] += 60
        assert await provider.measure(flow_target(reading, {"c0": seen(10)}, T0)) is not None
    kept = provider._readings["uid"]  # what the provider keeps for the resource
    assert (set(kept.canary), set(kept.production)) == ({"uid-c0"}, {"uid-p0"})
    provider.forget("uid")
    assert provider._readings == {}
