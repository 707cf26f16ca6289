"""The egress allow-list on the analysis' Prometheus calls, checked when a connection is made
(aliasroll.outbound.GuardedTransport, the registry client's check too): a name that resolves to a
refused address, and a redirect to one, reach nothing; an allowed name is connected to at the very
address that was checked, never resolved again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpcore2
import httpx2
import pytest
from hostile import Behaviour, hostile

from aliasroll import outbound
from aliasroll.analysis import AnalysisTarget, PrometheusProvider
from aliasroll.analysis.fetch import CallFailed, call
from aliasroll.analysis.prometheus import new_client
from aliasroll.egress import Destinations
from aliasroll.errors import AnalysisUnavailable

TARGET = AnalysisTarget(
    key="uid", namespace="ml", model="m", production_version="1", canary_version="2", interval_seconds=30
)
METADATA_REFUSED = (
    "169.254.169.254) is a link-local address (where clouds serve instance metadata); the operator "
    "calls it only if ALIASROLL_ALLOWED_DESTINATIONS lists it (169.254.169.254 or a range within "
    "169.254.0.0/16)"
)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """What each name resolves to in the test (an address resolves to itself)."""
    table: dict[str, list[str]] = {}

    async def resolve(host: str, port: int) -> list[str]:
        if host[0].isdigit():
            return [host]
        if host not in table:
            raise OSError(f"{host} does not resolve")
        return table[host]

    monkeypatch.setattr(outbound, "resolve", resolve)
    return table


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses the operator's clients open connections to (they still connect)."""
    opened: list[str] = []
    real = httpcore2.AnyIOBackend.connect_tcp

    async def connect_tcp(self: httpcore2.AnyIOBackend, host: str, port: int, **settings: Any) -> Any:
        opened.append(host)
        return await real(self, host, port, **settings)

    monkeypatch.setattr(httpcore2.AnyIOBackend, "connect_tcp", connect_tcp)
    return opened


@pytest.fixture
async def closing() -> AsyncIterator[list[httpx2.AsyncClient]]:
    clients: list[httpx2.AsyncClient] = []
    yield clients
    for client in clients:
        await client.aclose()


def prometheus(
    address: str, destinations: Destinations, closing: list[httpx2.AsyncClient]
) -> PrometheusProvider:
    client = new_client(timeout_seconds=2, destinations=destinations)
    closing.append(client)
    return PrometheusProvider(address, timeout_seconds=2, client=client)


async def test_a_name_that_resolves_to_a_refused_address_is_never_connected_to(
    names: dict[str, list[str]], connected: list[str], closing: list[httpx2.AsyncClient]
) -> None:
    # Any name is allowed (the default list); the one address of the metadata server among the
    # answers refuses it, whichever address a connection would have taken.
    names["prometheus.tenant.example"] = ["10.0.0.5", "169.254.169.254"]
    address = "http://prometheus.tenant.example:9090"
    provider = prometheus(address, Destinations.parse("*"), closing)
    with pytest.raises(AnalysisUnavailable) as raised:
        await provider.measure(TARGET)
    assert raised.value.message == (
        f"analysis.prometheus.address {address} is not called: prometheus.tenant.example ({METADATA_REFUSED}"
    )
    assert connected == []


async def test_an_allowed_name_is_connected_to_at_the_address_that_was_checked(
    names: dict[str, list[str]], connected: list[str], closing: list[httpx2.AsyncClient]
) -> None:
    # prometheus.checked.invalid resolves nowhere but in the check: the query reaching the server
    # shows that the connection went to the checked address, not to the name resolved again.
    body = {"status": "success", "data": {"resultType": "vector", "result": []}}
    async with hostile(Behaviour("answer", body=json.dumps(body).encode())) as server:
        names["prometheus.checked.invalid"] = ["127.0.0.1"]
        provider = prometheus(
            f"http://prometheus.checked.invalid:{server.port}", Destinations.parse("*,127.0.0.1"), closing
        )
        with pytest.raises(AnalysisUnavailable, match="has no samples of"):
            await provider.measure(TARGET)
        assert server.connections >= 1
    assert set(connected) == {"127.0.0.1"}


async def test_a_redirect_to_a_refused_address_reaches_nothing(
    names: dict[str, list[str]], connected: list[str], closing: list[httpx2.AsyncClient]
) -> None:
    names["metadata.tenant.example"] = ["169.254.169.254"]
    where = (("Location", "http://metadata.tenant.example/latest/meta-data/"),)
    async with hostile(Behaviour("answer", status=302, headers=where)) as server:
        allowed = Destinations.parse("*,127.0.0.1")
        # The provider follows no redirect: the answer is not Prometheus'.
        provider = prometheus(server.url, allowed, closing)
        with pytest.raises(AnalysisUnavailable, match="answered HTTP 302 without a Prometheus API answer"):
            await provider.measure(TARGET)
        # A client that did follow it would be refused when it connects, with the allow-list's words.
        following = new_client(timeout_seconds=2, destinations=allowed)
        following.follow_redirects = True
        closing.append(following)
        with pytest.raises(CallFailed) as raised:
            await call(following, "GET", f"{server.url}/api/v1/query", deadline=2, limit=1024)
    assert raised.value.refused == f"metadata.tenant.example ({METADATA_REFUSED}"
    assert str(raised.value) == f"is not called: {raised.value.refused}"
    assert set(connected) == {"127.0.0.1"}, "only the allowed server was connected to"
