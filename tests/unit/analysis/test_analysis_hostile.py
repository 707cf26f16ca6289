"""The canary analysis against hostile endpoints (tests/unit/hostile.py, real sockets on 127.0.0.1):
a pod's /metrics and a Prometheus are the tenant's to choose, so each call has a total deadline (a
drip does not extend it), a byte budget counted while the body streams in (the connection is closed
there; a body is never read whole first), and what goes wrong is said in fixed words, never with
anything the endpoint sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx2
import pytest
from hostile import MARKER, Behaviour, Counting, Hostile, hostile

from aliasroll.analysis import AnalysisTarget, PodEndpoint, PodMetricsProvider, PrometheusProvider
from aliasroll.analysis.pods import MAX_BODY_BYTES, MAX_SERIES_BYTES
from aliasroll.analysis.prometheus import MAX_ANSWER_BYTES
from aliasroll.errors import AnalysisUnavailable

DEADLINE = 1.0  # each call's, in these tests
# Scheduling on a shared, busy machine: how late a deadline may be seen to end.
SLACK = 1.5
# A body is read in pieces of at most this much (httpcore's reads): reading stops within one.
PIECE = 64 * 1024
SERIES_LINE = b'aliasroll_serving_requests_total{model="m",version="2",code="200",x="' + MARKER + b'"} 1\n'


@dataclass(frozen=True)
class Case:
    behaviour: Behaviour
    phrase: str  # what the message says (a fixed phrase)
    budget: int | None  # at most this many body bytes read (plus a piece); None: no more than sent
    quick: bool = False  # over long before the deadline (the budget, or a refusal, ends it)


def pod_cases() -> dict[str, Case]:
    return {
        "a drip of a byte every half second": Case(
            Behaviour("drip"), f"did not answer within {DEADLINE:g} s", budget=None
        ),
        "an answer's head that drips": Case(
            Behaviour("drip-head", every=0.05), f"did not answer within {DEADLINE:g} s", budget=0
        ),
        "never answers": Case(Behaviour("silent"), f"did not answer within {DEADLINE:g} s", budget=0),
        "an endless stream": Case(
            Behaviour("endless"), "answered more than 4 MiB", budget=MAX_BODY_BYTES, quick=True
        ),
        "an endless stream of the serving series": Case(
            Behaviour("endless", line=SERIES_LINE),
            "more than 256 KiB of samples of the serving series: not a serving pod",
            budget=MAX_SERIES_BYTES,
            quick=True,
        ),
        "30 MB, announced": Case(Behaviour("huge"), "answered more than 4 MiB", budget=0, quick=True),
        "30 MB, not announced": Case(
            Behaviour("huge-chunked"), "answered more than 4 MiB", budget=MAX_BODY_BYTES, quick=True
        ),
        "not the exposition format": Case(
            Behaviour("answer", body=b"<html>" + MARKER + b"</html>\n"),
            "not Prometheus exposition text",
            budget=None,
            quick=True,
        ),
        "a bad sample of the serving series": Case(
            Behaviour("answer", body=b'aliasroll_serving_requests_total{x="' + MARKER + b'" 1\n'),
            "not Prometheus exposition text",
            budget=None,
            quick=True,
        ),
        "a compressed answer": Case(
            Behaviour("endless", headers=(("Content-Encoding", "gzip"),)),
            "answered with a compressed body",
            budget=0,
            quick=True,
        ),
        "an error status": Case(Behaviour("endless", status=500), "answered HTTP 500", budget=0, quick=True),
    }


@pytest.fixture
async def counting() -> AsyncIterator[Counting]:
    transport = Counting()
    yield transport
    await transport.aclose()


async def bounded(
    call: Callable[[], Awaitable[object]], *, within: float
) -> tuple[float, BaseException | None]:
    """Runs the call, failing the test (not hanging it) when it takes far longer than its bound."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(within + 5):
            await call()
    except TimeoutError:
        pytest.fail(f"still running {within + 5:g} s on: the call has no total deadline")
    except Exception as error:
        return time.monotonic() - began, error
    return time.monotonic() - began, None


def check(
    case: Case, server: Hostile, counting: Counting, elapsed: float, message: str, *, calls: int
) -> None:
    assert case.phrase in message, message
    assert MARKER.decode() not in message, f"the endpoint's words reached the message: {message}"
    bound = 0.5 if case.quick else DEADLINE
    assert elapsed <= bound + SLACK, f"{elapsed:.1f} s, bounded at {bound:g} s"
    if case.budget is not None:
        limit = calls * (case.budget + PIECE if case.budget else 0)
        assert counting.read <= limit, f"read {counting.read} bytes, budget {case.budget}"
    assert counting.read <= server.sent or server.behaviour.mode == "answer"


async def closed(server: Hostile, *, within: float = 2.0) -> None:
    """The operator closed every connection it opened (a drip or a stream ends on its side too); a
    whole answer may be kept alive for the next call."""
    if server.behaviour.mode == "answer":
        return
    async with asyncio.timeout(within):
        await server.idle.wait()


def pod_target(port: int) -> AnalysisTarget:
    return AnalysisTarget(
        key="uid",
        namespace="ml",
        model="m",
        production_version="1",
        canary_version="2",
        interval_seconds=30,
        canary_pods=(PodEndpoint("canary-0", "127.0.0.1", port),),
    )


@pytest.mark.parametrize("case", pod_cases().values(), ids=pod_cases().keys())
async def test_a_pod_s_metrics_are_read_within_a_deadline_and_a_budget(
    case: Case, counting: Counting
) -> None:
    provider = PodMetricsProvider(
        timeout_seconds=DEADLINE, client=httpx2.AsyncClient(transport=counting, trust_env=False)
    )
    async with hostile(case.behaviour) as server:
        tracemalloc.start()
        try:
            elapsed, error = await bounded(lambda: provider.measure(pod_target(server.port)), within=DEADLINE)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(error, AnalysisUnavailable), error
        message = str(error)
        assert message.startswith(
            "none of the 1 canary pods answered GET /metrics: canary-0 (http://127.0.0.1:"
        )
        check(case, server, counting, elapsed, message, calls=1)
        # Never the whole body in memory: what is kept is bounded, whatever the pod sends.
        assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
        await closed(server)
    await provider.aclose()


def prometheus_cases() -> dict[str, Case]:
    def answer(body: object, status: int = 200) -> Behaviour:
        return Behaviour("answer", status=status, body=json.dumps(body).encode())

    sample = {"metric": {"version": "1"}, "value": [0, "1"]}
    return {
        "a drip of a byte every half second": Case(
            Behaviour("drip"), f"did not answer within {DEADLINE:g} s", budget=None
        ),
        "an answer's head that drips": Case(
            Behaviour("drip-head", every=0.05), f"did not answer within {DEADLINE:g} s", budget=0
        ),
        "never answers": Case(Behaviour("silent"), f"did not answer within {DEADLINE:g} s", budget=0),
        "an endless stream": Case(
            Behaviour("endless"), "answered more than 256 KiB", budget=MAX_ANSWER_BYTES, quick=True
        ),
        "30 MB, announced": Case(Behaviour("huge"), "answered more than 256 KiB", budget=0, quick=True),
        "30 MB, not announced": Case(
            Behaviour("huge-chunked"), "answered more than 256 KiB", budget=MAX_ANSWER_BYTES, quick=True
        ),
        "a compressed answer": Case(
            Behaviour("endless", headers=(("Content-Encoding", "gzip"),)),
            "answered with a compressed body",
            budget=0,
            quick=True,
        ),
        "an error with words of its own": Case(
            answer({"status": "error", "errorType": "bad_data", "error": MARKER.decode()}, status=400),
            "(HTTP 400, bad_data)",
            budget=None,
            quick=True,
        ),
        "an error of a type Prometheus does not have": Case(
            answer({"status": "error", "errorType": MARKER.decode(), "error": MARKER.decode()}, status=422),
            "(HTTP 422, an error)",
            budget=None,
            quick=True,
        ),
        "a result of another type": Case(
            answer({"status": "success", "data": {"resultType": MARKER.decode(), "result": []}}),
            "with something other than an instant vector",
            budget=None,
            quick=True,
        ),
        "a sample it cannot read": Case(
            answer(
                {"status": "success", "data": {"resultType": "vector", "result": [sample, MARKER.decode()]}}
            ),
            "with a sample it cannot read",
            budget=None,
            quick=True,
        ),
        "not JSON": Case(
            Behaviour("answer", body=b"<html>" + MARKER + b"</html>"),
            "answered HTTP 200 without a Prometheus API answer",
            budget=None,
            quick=True,
        ),
        "JSON nested deeper than a parser goes": Case(
            Behaviour("answer", body=b"[" * 200_000),
            "answered HTTP 200 without a Prometheus API answer",
            budget=None,
            quick=True,
        ),
    }


@pytest.mark.parametrize("case", prometheus_cases().values(), ids=prometheus_cases().keys())
async def test_prometheus_is_queried_within_a_deadline_and_a_budget(case: Case, counting: Counting) -> None:
    async with hostile(case.behaviour) as server:
        provider = PrometheusProvider(
            server.url, timeout_seconds=DEADLINE, client=httpx2.AsyncClient(transport=counting)
        )
        target = AnalysisTarget(
            key="uid",
            namespace="ml",
            model="m",
            production_version="1",
            canary_version="2",
            interval_seconds=30,
        )
        tracemalloc.start()
        try:
            elapsed, error = await bounded(lambda: provider.measure(target), within=DEADLINE)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(error, AnalysisUnavailable), error
        assert str(error).startswith(f"Prometheus at {server.url} ") or str(error).startswith(server.url)
        check(case, server, counting, elapsed, str(error), calls=3)
        assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
        await closed(server)
        await provider.aclose()
