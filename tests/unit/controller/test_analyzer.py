"""The measuring step of a pass (controller/analyzer.py): what it asks the metrics provider (the
pods from the watch, with their uid and serving container's identity; the pods it does not measure;
the pass's time) and what the planner gets back (a measurement with where its window began, a
baseline, or an error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpcore2
import pytest
from builders import NOW, OWNER, FixedObjects, spec

from aliasroll import outbound
from aliasroll.analysis import AnalysisTarget, PodEndpoint, TrackWindows, Verdict, Window
from aliasroll.controller.analyzer import Analyzer
from aliasroll.egress import Destinations
from aliasroll.errors import AnalysisUnavailable, InvalidSpec
from aliasroll.planning.canary import AnalysisResult, CanaryRun, Phase
from aliasroll.spec import ModelDeploymentSpec, PrometheusSource

PASSING = Window(requests=100, errors=0, buckets=((0.1, 100), (float("inf"), 100)))
PRODUCTION = Window(requests=1000, errors=0, buckets=((0.1, 1000), (float("inf"), 1000)))


def analysed(**analysis: Any) -> ModelDeploymentSpec:
    return spec(
        canary={
            "alias": "canary",
            "steps": [{"weight": 20, "duration": "1m"}],
            "analysis": {"interval": "30s", "minRequests": 20, "errorRate": {"maxPercent": 1}, **analysis},
        }
    )


class Scripted:
    """A metrics provider that answers what it is given and keeps what it was asked."""

    def __init__(self, answer: TrackWindows | Exception | None) -> None:
        self.answer = answer
        self.asked: list[AnalysisTarget] = []

    async def measure(self, target: AnalysisTarget) -> TrackWindows | None:
        self.asked.append(target)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def forget(self, key: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


def pod(
    name: str,
    *,
    track: str | None = "canary",
    ip: str | None = "10.0.0.9",
    ready: bool = True,
    containers: list[Mapping[str, Any]] | None = None,
    ports: dict[str, int] | None = None,
) -> Mapping[str, Any]:
    labels = {"aliasroll.io/track": track} if track else {}
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    if containers is not None:
        status["containerStatuses"] = containers
    made: dict[str, Any] = {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
        "status": status,
    }
    if ports is not None:
        declared = [
            {"name": port, "containerPort": number, "protocol": "TCP"} for port, number in ports.items()
        ]
        made["spec"] = {"containers": [{"name": "istio-proxy"}, {"name": "model-server", "ports": declared}]}
    return made


def serving(restarts: int, container_id: str) -> Mapping[str, Any]:
    return {"name": "model-server", "restartCount": restarts, "containerID": container_id}


SIDECAR = {"name": "istio-proxy", "restartCount": 7, "containerID": "containerd://side"}


async def measure(provider: Scripted, pods: list[Mapping[str, Any]]) -> AnalysisResult:
    """What a pass gets from the analyzer: nothing at once (the reading starts beside the pass), then,
    once the reading woke the resource, its result."""
    analyzer = Analyzer(FixedObjects(pods=pods), pods=provider)
    woken = asyncio.Event()

    async def ask() -> AnalysisResult | None:
        return await analyzer.measure(
            owner=OWNER,
            spec=analysed(),
            run=CanaryRun(version="3", phase=Phase.ANALYZING),
            previous_status={"production": {"version": "2"}},
            now=NOW,
            wake=woken.set,
        )

    assert await ask() is None
    assert analyzer.measuring(OWNER.uid)
    await asyncio.wait_for(woken.wait(), 5)
    assert not analyzer.measuring(OWNER.uid)
    result = await ask()
    assert result is not None
    assert await ask() is None, "a result is handed to one pass only"
    await analyzer.aclose()
    return result


async def test_the_provider_is_asked_for_the_pods_with_their_containers_and_the_pass_time() -> None:
    provider = Scripted(None)
    await measure(
        provider,
        [
            pod("p0", track="production", ip="10.0.0.1", containers=[SIDECAR, serving(0, "containerd://a")]),
            pod("c0", ip="10.0.0.2", containers=[serving(2, "containerd://c")]),
            pod("c1", ip="10.0.0.3", ready=False, containers=[serving(0, "containerd://d")]),
            pod("c2", ip=None, containers=[]),
            pod("c3", ip="10.0.0.4", containers=[SIDECAR]),
            pod("other", track=None),
        ],
    )
    (target,) = provider.asked
    assert target.read_at == NOW
    assert (target.namespace, target.production_version, target.canary_version) == ("ml", "2", "3")
    assert target.production_pods == (
        PodEndpoint("p0", "10.0.0.1", 9090, uid="uid-p0", container="0/containerd://a"),
    )
    # Scraped on the admin port (spec.serving.adminPort, 9090 by default), never the serving port.
    assert target.canary_pods == (
        PodEndpoint("c0", "10.0.0.2", 9090, uid="uid-c0", container="2/containerd://c"),
        PodEndpoint("c3", "10.0.0.4", 9090, uid="uid-c3", container=""),  # identity unknown
    )
    # Listed but not measured now: what was read of them is kept.
    assert target.unmeasured_pods == frozenset({"uid-c1", "uid-c2"})


async def test_each_pod_is_scraped_on_the_admin_port_it_declares() -> None:
    """/metrics is on the serving container's port named admin, not on the port the Services route
    to; a pod made before the admin port existed (an operator upgrade rolls it) declares only http,
    where it still answers /metrics."""
    provider = Scripted(None)
    await measure(
        provider,
        [
            pod("p0", track="production", ip="10.0.0.1", ports={"http": 8080, "admin": 9191}),
            pod("c0", ip="10.0.0.2", ports={"http": 8080, "admin": 9090}),
            pod("c1", ip="10.0.0.3", ports={"http": 5000}),  # made by an operator before admin ports
        ],
    )
    (target,) = provider.asked
    assert [(p.name, p.port) for p in target.production_pods] == [("p0", 9191)]
    assert [(p.name, p.port) for p in target.canary_pods] == [("c0", 9090), ("c1", 5000)]


# (the provider's answer, verdict or None, window_start's offset from now or None, error, message end)
ANSWERS: dict[str, tuple[TrackWindows | Exception | None, Verdict | None, float | None, str | None]] = {
    "a baseline: no measurement, no window, no error": (None, None, None, None),
    "a window counted from an earlier reading starts at that reading's pass time": (
        TrackWindows(canary=PASSING, production=PRODUCTION, seconds=90.4, since=NOW - timedelta(seconds=90)),
        Verdict.PASSED,
        90,
        None,
    ),
    "a window with no reading time starts its seconds back": (
        TrackWindows(canary=PASSING, production=PRODUCTION, seconds=30),
        Verdict.PASSED,
        30,
        None,
    ),
    "no sample of the canary: Inconclusive, never Passed": (
        TrackWindows(
            canary=Window(),
            production=PRODUCTION,
            seconds=30,
            since=NOW - timedelta(seconds=30),
            caveat="Prometheus has no samples of the canary",
        ),
        Verdict.INCONCLUSIVE,
        30,
        None,
    ),
    "metrics unreadable: an error, never a measurement": (
        AnalysisUnavailable("no pod answered"),
        None,
        None,
        "no pod answered",
    ),
}


@pytest.mark.parametrize("case", ANSWERS.values(), ids=ANSWERS.keys())
async def test_what_the_planner_gets(
    case: tuple[TrackWindows | Exception | None, Verdict | None, float | None, str | None],
) -> None:
    answer, verdict, back, error = case
    result = await measure(Scripted(answer), [pod("c0")])
    assert (result.version, result.measured_at, result.error) == ("3", NOW, error)
    if verdict is None:
        assert result.measurement is None
        assert result.window_start is None
    else:
        assert result.measurement is not None
        assert result.measurement.verdict is verdict
        assert back is not None
        assert result.window_start == NOW - timedelta(seconds=back)
    if isinstance(answer, TrackWindows) and answer.caveat:
        assert result.measurement is not None
        assert result.measurement.message.endswith(f"; {answer.caveat}")


# spec.canary.analysis.prometheus.namespaceLabel -> the provider's namespace label.
NAMESPACE_LABELS: dict[str, tuple[dict[str, Any], str]] = {
    "default: namespace": ({}, "namespace"),
    "another label name": ({"namespaceLabel": "kubernetes_namespace"}, "kubernetes_namespace"),
    "none": ({"namespaceLabel": ""}, ""),
}


@pytest.mark.parametrize("case", NAMESPACE_LABELS.values(), ids=NAMESPACE_LABELS.keys())
async def test_the_spec_s_namespace_label_reaches_the_prometheus_provider(
    case: tuple[dict[str, Any], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, label = case
    source = analysed(prometheus={"address": "http://prometheus:9090", **settings}).canary
    assert source is not None
    assert source.analysis is not None
    assert source.analysis.prometheus == PrometheusSource(
        address="http://prometheus:9090", namespace_label=label
    )
    made: list[dict[str, Any]] = []

    class Recorded(Scripted):
        def __init__(self, address: str, **settings: Any) -> None:
            super().__init__(None)
            made.append({"address": address, **settings})

    monkeypatch.setattr("aliasroll.controller.analyzer.PrometheusProvider", Recorded)
    analyzer = Analyzer(FixedObjects())
    analyzer._provider("uid", source.analysis.prometheus)
    assert [{k: v for k, v in m.items() if k not in ("client", "timeout_seconds")} for m in made] == [
        {"address": "http://prometheus:9090", "matchers": {}, "namespace_label": label}
    ]
    await analyzer.aclose()


@pytest.mark.parametrize("label", ["kube-namespace", "version", "le"])
def test_a_namespace_label_the_queries_cannot_use_is_refused_by_the_spec(label: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.canary\.analysis\.prometheus\.namespaceLabel"):
        analysed(prometheus={"address": "http://prometheus:9090", "namespaceLabel": label})


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("http://169.254.169.254/latest", "link-local"),
        ("http://127.0.0.1:9090", "loopback"),
        ("http://kubernetes.default.svc:443", "API server"),
        ("http://metrics.elsewhere.example:9090", "not in ALIASROLL_ALLOWED_DESTINATIONS"),
    ],
)
async def test_a_prometheus_address_the_egress_list_refuses_is_never_called(
    address: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's own list: in-cluster names only; loopback and the rest refused as built in.
    destinations = Destinations.parse("*.svc.cluster.local,10.0.0.0/8")
    connected: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        # Names resolve outside the allowed range (a name is judged by its addresses too).
        return [host] if host[0].isdigit() else ["192.168.1.5"]

    async def connect_tcp(self: object, host: str, port: int, **settings: Any) -> None:
        connected.append(host)
        raise httpcore2.ConnectError("not in this test")

    # The check is the client's, when it connects (aliasroll.outbound), on what the name resolves to.
    monkeypatch.setattr(outbound, "resolve", resolve)
    monkeypatch.setattr(httpcore2.AnyIOBackend, "connect_tcp", connect_tcp)
    analyzer = Analyzer(FixedObjects(), destinations=destinations)
    woken = asyncio.Event()
    ask = {
        "owner": OWNER,
        "spec": analysed(prometheus={"address": address}),
        "run": CanaryRun(version="3", phase=Phase.ANALYZING),
        "previous_status": {"production": {"version": "2"}},
        "now": NOW,
        "wake": woken.set,
    }
    assert await analyzer.measure(**ask) is None
    await asyncio.wait_for(woken.wait(), 5)
    result = await analyzer.measure(**ask)
    await analyzer.aclose()
    assert result is not None
    assert result.measurement is None
    assert result.error is not None
    assert result.error.startswith(f"analysis.prometheus.address {address} is not called: "), result.error
    assert why in result.error
    assert connected == [], "nothing was connected to for a refused address"
