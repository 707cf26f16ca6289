"""The canary analysis against real serving processes: two versions of a model, started as the image
starts them against the real MLflow registry, answer real traffic; the pod scraper reads their
/metrics and a real Prometheus (built from source) scrapes the same processes. Each phase of traffic
(too little canary traffic, a clean canary, a failing canary, a slow canary) must get the right
windows and verdict from the pod scraper, and the same verdict from PromQL. The Prometheus labels the
series namespace="ml", as a Kubernetes service discovery's relabelling does, and the queries select
the resource's namespace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from aliasroll.analysis import (
    AnalysisTarget,
    Limits,
    PodEndpoint,
    PodMetricsProvider,
    PrometheusProvider,
    TrackWindows,
    Verdict,
    judge,
)
from aliasroll.errors import AnalysisUnavailable
from mlflowserver import MlflowServer, free_port
from prometheusserver import PrometheusServer
from support.served import ServedProcess

PICKY_MODEL = Path(__file__).parent / "models" / "picky_model.py"
MODEL = "analysis-picky"
NAMESPACE = "ml"
LIMITS = Limits(
    min_canary_requests=10,
    max_error_percent=5.0,
    max_error_increase_points=2.0,
    # The slow phase's requests take 600 ms; the others a few ms (up to a few hundred on a busy machine).
    max_p99_seconds=0.45,
)


@dataclass(frozen=True)
class Phase:
    name: str
    production: list[str]  # the texts sent, one request each
    canary: list[str]
    verdict: Verdict
    failed: tuple[str, ...] = ()  # metrics that fail


PHASES = [
    Phase("too little canary traffic", ["fine"] * 30, ["fine"] * 2, Verdict.INCONCLUSIVE),
    Phase("a clean canary", ["fine"] * 59 + ["boom"], ["fine"] * 30, Verdict.PASSED),
    Phase("a failing canary", ["fine"] * 60, ["fine"] * 24 + ["boom"] * 6, Verdict.FAILED, ("errorRate",)),
    Phase("a slow canary", ["fine"] * 40, ["sleep 0.6"] * 10, Verdict.FAILED, ("latencyP99",)),
]


@pytest.fixture(scope="module")
def versions(mlflow_server: MlflowServer) -> tuple[str, str]:
    """Two versions of the picky model: production and canary. They differ in what they are sent."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(mlflow_server.url)
    registered = []
    for _ in range(2):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PICKY_MODEL),
                signature=infer_signature(pd.DataFrame({"text": ["x"]}), [1]),
                input_example={"text": ["warm"]},
                pip_requirements=["mlflow-skinny", "pandas"],
                registered_model_name=MODEL,
            )
        registered.append(str(info.registered_model_version))
    return registered[0], registered[1]


@pytest.fixture(scope="module")
def servers(
    versions: tuple[str, str], mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServedProcess, ServedProcess]]:
    workdir = tmp_path_factory.mktemp("analysis")
    started = []
    try:
        for track, version in zip(("production", "canary"), versions, strict=True):
            started.append(
                ServedProcess(
                    model_uri=f"models:/{MODEL}/{version}",
                    tracking_uri=mlflow_server.url,
                    workdir=workdir,
                    # A short drain: nothing is in flight when the module's tests end.
                    env={"ALIASROLL_TRACK": track, "DRAIN_SECONDS": "2"},
                ).start()
            )
        for server in started:
            server.wait_until("/ready")
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def prometheus(servers: tuple[ServedProcess, ServedProcess]) -> Iterator[PrometheusServer]:
    targets = [f"127.0.0.1:{server.admin_port}" for server in servers]  # /metrics: the admin port
    with PrometheusServer(targets=targets, labels={"namespace": NAMESPACE}, scrape_interval="1s") as server:
        yield server


def target(
    servers: tuple[ServedProcess, ServedProcess],
    versions: tuple[str, str],
    *,
    interval: int = 60,
    dead_port: int | None = None,
    canary_version: str | None = None,
) -> AnalysisTarget:
    production, canary = servers
    dead = (PodEndpoint("production-gone", "127.0.0.1", dead_port),) if dead_port else ()
    return AnalysisTarget(
        key="uid-1",
        namespace=NAMESPACE,
        model=MODEL,
        production_version=versions[0],
        canary_version=canary_version or versions[1],
        interval_seconds=interval,
        production_pods=(PodEndpoint("production-0", "127.0.0.1", production.admin_port), *dead),
        canary_pods=(PodEndpoint("canary-0", "127.0.0.1", canary.admin_port),),
    )


def send(server: ServedProcess, texts: list[str]) -> None:
    for text in texts:
        answer = server.post({"dataframe_records": [{"text": text}]})
        assert answer.status_code == (500 if text == "boom" else 200), answer.text


def errors_in(texts: list[str]) -> int:
    return texts.count("boom")


def failed_metrics(windows: TrackWindows) -> tuple[str, ...]:
    measurement = judge(LIMITS, canary=windows.canary, production=windows.production)
    return tuple(m.metric for m in measurement.metrics if m.verdict is Verdict.FAILED)


async def test_pod_scraper_measures_each_window_and_verdict(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str]
) -> None:
    production, canary = servers
    provider = PodMetricsProvider(timeout_seconds=2)
    # A pod that does not answer is left out and named; the others are still measured.
    watched = target(servers, versions, dead_port=free_port())
    try:
        assert await provider.measure(watched) is None  # the first call takes the baseline
        for phase in PHASES:
            send(production, phase.production)
            send(canary, phase.canary)
            windows = await provider.measure(watched)
            assert windows is not None, phase.name
            # Exactly what was sent in this phase, nothing of the phase before.
            assert (windows.production.requests, windows.production.errors) == (
                len(phase.production),
                errors_in(phase.production),
            ), phase.name
            assert (windows.canary.requests, windows.canary.errors) == (
                len(phase.canary),
                errors_in(phase.canary),
            ), phase.name
            assert windows.unreachable_pods == ("production-gone",)
            measurement = judge(LIMITS, canary=windows.canary, production=windows.production)
            assert measurement.verdict is phase.verdict, f"{phase.name}: {measurement.summary()}"
            assert failed_metrics(windows) == phase.failed, measurement.summary()
        # The slow phase: every canary request took over 600 ms, so its p99 lies above the 500 ms bound.
        p99 = windows.canary.p99_seconds
        assert p99 is not None
        assert p99 > 0.5
    finally:
        await provider.aclose()


async def test_pod_scraper_without_any_answering_pod_is_unavailable_not_failed(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str]
) -> None:
    provider = PodMetricsProvider(timeout_seconds=1)
    dead = PodEndpoint("canary-gone", "127.0.0.1", free_port())
    watched = target(servers, versions)
    try:
        with pytest.raises(
            AnalysisUnavailable, match=r"none of the 1 canary pods answered GET /metrics"
        ) as raised:
            await provider.measure(replace(watched, canary_pods=(dead,)))
        assert "canary-gone" in str(raised.value)
        assert "NetworkPolicies" in str(raised.value)
        # A version no pod serves yet: the pods answer, without series of it, so the window is empty.
        assert await provider.measure(target(servers, versions, canary_version="999")) is None
        send(servers[0], ["fine"] * 3)
        windows = await provider.measure(target(servers, versions, canary_version="999"))
        assert windows is not None
        assert (windows.production.requests, windows.canary.requests) == (3, 0)
        assert (
            judge(LIMITS, canary=windows.canary, production=windows.production).verdict
            is Verdict.INCONCLUSIVE
        )
    finally:
        await provider.aclose()


async def test_prometheus_gives_the_pod_scraper_s_verdicts(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str], prometheus: PrometheusServer
) -> None:
    production, canary = servers
    pods = PodMetricsProvider()
    promql = PrometheusProvider(prometheus.url, matchers={"namespace": NAMESPACE})
    try:
        for phase in PHASES:
            # Prometheus has seen all earlier traffic; the window starts after that, with one sample
            # taken inside it before this phase's traffic, and ends with one taken after it.
            prometheus.wait_scraped(after=time.time())
            started = time.time()
            pods.forget("uid-1")
            assert await pods.measure(target(servers, versions)) is None
            prometheus.wait_scraped(after=started + 1.5)
            send(production, phase.production)
            send(canary, phase.canary)
            prometheus.wait_scraped(after=time.time())
            interval = math.floor(time.time() - started)
            watched = target(servers, versions, interval=interval)
            scraped, queried = await pods.measure(watched), await promql.measure(watched)
            assert scraped is not None
            assert queried is not None
            assert queried.seconds == interval
            by_pods = judge(LIMITS, canary=scraped.canary, production=scraped.production)
            by_promql = judge(LIMITS, canary=queried.canary, production=queried.production)
            print(f"{phase.name}:\n  pods:       {by_pods.summary()}\n  Prometheus: {by_promql.summary()}")
            assert by_pods.verdict is by_promql.verdict is phase.verdict, (
                f"{phase.name}: pods {by_pods.summary()} / Prometheus {by_promql.summary()}"
            )
            assert failed_metrics(queried) == phase.failed
            # Prometheus extrapolates an increase to the ends of the range: counts a little above.
            for mine, theirs in ((scraped.production, queried.production), (scraped.canary, queried.canary)):
                assert mine.requests <= theirs.requests <= mine.requests * 3, phase.name
                if mine.errors:
                    assert theirs.error_percent == pytest.approx(mine.error_percent, rel=0.35), phase.name
            if phase.failed == ("latencyP99",):
                assert queried.canary.p99_seconds == pytest.approx(scraped.canary.p99_seconds, rel=0.05)
    finally:
        await pods.aclose()
        await promql.aclose()


async def test_prometheus_without_canary_samples_is_no_canary_traffic_never_a_pass(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str], prometheus: PrometheusServer
) -> None:
    prometheus.wait_scraped(after=time.time() + 1)
    promql = PrometheusProvider(prometheus.url)
    try:
        windows = await promql.measure(target(servers, versions, interval=30, canary_version="999"))
        assert windows.canary.requests == 0
        assert windows.caveat is not None
        said = 'version="999",namespace="ml"} over the last 30 s, counted as no canary traffic'
        assert said in windows.caveat
        measurement = judge(LIMITS, canary=windows.canary, production=windows.production)
        assert measurement.verdict is Verdict.INCONCLUSIVE
    finally:
        await promql.aclose()


async def test_prometheus_selects_the_resource_s_namespace(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str], prometheus: PrometheusServer
) -> None:
    """The Prometheus labels the serving processes' series namespace="ml", as a Kubernetes service
    discovery's relabelling does: a resource in another namespace does not see them."""
    prometheus.wait_scraped(after=time.time() + 1)
    send(servers[0], ["fine"] * 3)
    prometheus.wait_scraped(after=time.time() + 1)
    watched = target(servers, versions, interval=30)
    elsewhere = replace(watched, namespace="elsewhere")
    cases = {
        "the resource's namespace: its series": (PrometheusProvider(prometheus.url), watched, None),
        "another namespace: none of them": (
            PrometheusProvider(prometheus.url),
            elsewhere,
            r'version="\d+",namespace="elsewhere"\} over the last 30 s: .* \(the namespace matcher is the '
            r"resource's namespace: set analysis.prometheus.namespaceLabel",
        ),
        "another label name: none of them (the series carry namespace)": (
            PrometheusProvider(prometheus.url, namespace_label="kubernetes_namespace"),
            watched,
            r'kubernetes_namespace="ml"\} over the last 30 s',
        ),
        "no namespace matcher: every namespace's": (
            PrometheusProvider(prometheus.url, namespace_label=""),
            elsewhere,
            None,
        ),
    }
    for name, (provider, asked, refused) in cases.items():
        try:
            if refused is None:
                windows = await provider.measure(asked)
                assert windows.production.requests >= 3, name
            else:
                with pytest.raises(AnalysisUnavailable, match=refused):
                    await provider.measure(asked)
        finally:
            await provider.aclose()


async def test_prometheus_errors_say_what_to_fix(
    servers: tuple[ServedProcess, ServedProcess], versions: tuple[str, str], prometheus: PrometheusServer
) -> None:
    prometheus.wait_scraped(after=time.time() + 1)
    watched = target(servers, versions, interval=30)
    cases = {
        "matchers that match no series": (
            PrometheusProvider(prometheus.url, matchers={"namespace": "elsewhere"}),
            r'has no samples of aliasroll_serving_request_duration_seconds_count\{model="analysis-picky",'
            r'version="\d+",namespace="elsewhere"\} over the last 30 s: check that it scrapes',
        ),
        "nothing listens": (
            PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=2),
            r"Prometheus at http://127.0.0.1:\d+ is unreachable .*check the analysis' Prometheus address",
        ),
        "not a Prometheus (a serving pod)": (
            PrometheusProvider(servers[0].url),
            r"answered HTTP 40\d without a Prometheus API answer: give the Prometheus server's base URL",
        ),
        "credentials never shown": (
            PrometheusProvider(f"http://user:secret@127.0.0.1:{free_port()}", timeout_seconds=2),
            r"Prometheus at http://127.0.0.1:\d+ is unreachable",
        ),
    }
    for name, (provider, message) in cases.items():
        try:
            with pytest.raises(AnalysisUnavailable, match=message) as raised:
                await provider.measure(watched)
            assert "secret" not in str(raised.value), name
        finally:
            await provider.aclose()


async def test_prometheus_refusing_a_query_is_unavailable(prometheus: PrometheusServer) -> None:
    provider = PrometheusProvider(prometheus.url)
    try:
        # Its own error type, never its words (which quote what was asked, or anything a server says).
        with pytest.raises(AnalysisUnavailable, match=r"could not run sum\( \(HTTP 400, bad_data\)$"):
            await provider._query("sum(")
    finally:
        await provider.aclose()
