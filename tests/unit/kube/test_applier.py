"""The applier's decisions that need no API server: when a write is needed, and what drift to undo;
and how it sets version mode's readiness gates."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx2
from lightkube import AsyncClient

from aliasroll.kube.applier import Applier, is_subset, up_to_date
from aliasroll.planning.versions import GateWrite

SERVICE = {"kind": "Service", "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "name": "http"}]}}


def test_defaults_added_by_the_server_need_no_write() -> None:
    live = {
        "kind": "Service",
        "spec": {
            "selector": {"app": "x"},
            "clusterIP": "10.0.0.1",
            "ports": [{"port": 80, "name": "http", "protocol": "TCP"}],
        },
    }
    assert up_to_date(SERVICE, live)


def test_changed_or_missing_fields_need_a_write() -> None:
    assert not is_subset(
        SERVICE, {"kind": "Service", "spec": {"selector": {"app": "y"}, "ports": [{"port": 80}]}}
    )
    assert not is_subset(
        {"spec": {"ports": [{"port": 80}, {"port": 81}]}}, {"spec": {"ports": [{"port": 80}]}}
    )
    assert not is_subset({"spec": {"replicas": 2}}, {"spec": {}})


def test_a_selector_key_added_by_hand_needs_a_write() -> None:
    """A Service selector is an atomic map: applying ours replaces it whole, so the pass must apply."""
    live = {"kind": "Service", "spec": {"selector": {"app": "x", "other": "y"}, "ports": [{"port": 80}]}}
    assert not up_to_date(SERVICE, live)


def test_extra_keys_elsewhere_are_left_to_their_owners() -> None:
    wanted = {"kind": "Deployment", "metadata": {"labels": {"a": "1"}}}
    assert up_to_date(wanted, {"kind": "Deployment", "metadata": {"labels": {"a": "1", "team": "ml"}}})


def test_the_gates_of_a_pass_are_set_all_at_once_and_a_pod_gone_is_skipped() -> None:
    """Version mode: a version's pods turn Ready together when their gates are patched together (the
    Service's endpoints then change in one step; kube-proxy applies a change at most once a second)."""

    class Client:
        def __init__(self) -> None:
            self.in_flight = 0
            self.most = 0
            self.bodies: dict[str, Any] = {}

        async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            if name == "gone":
                request = httpx2.Request("PATCH", f"https://api/{name}")
                raise httpx2.HTTPStatusError(
                    "404", request=request, response=httpx2.Response(404, request=request)
                )
            self.bodies[name] = body

    client = Client()
    gates = (GateWrite("a", True), GateWrite("gone", True), GateWrite("b", False))
    written = asyncio.run(Applier(cast(AsyncClient, client)).set_gates(gates, namespace="ml"))
    assert written == [("Pod", "a"), ("Pod", "b")]
    assert client.most == 3
    assert client.bodies["b"] == {
        "status": {"conditions": [{"type": "aliasroll.io/routed", "status": "False"}]}
    }
