"""Registry webhooks: signature, timestamp, replay and unknown model, each refused or ignored with a
log line and nothing else; an accepted delivery wakes the poller for its model at once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY
from test_poller import REGISTRY as ENDPOINT
from test_poller import Follower, ScriptedRegistry, until

from aliasroll.config import OperatorConfig
from aliasroll.http import Listener, metrics_app, parse_listen, webhook_app
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.poller import RegistryPoller
from aliasroll.webhooks import (
    DELIVERY_ID_HEADER,
    PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Outcome,
    SeenDeliveries,
    WebhookReceiver,
    check,
    sign,
)
from mlflowserver import free_port

SECRET = "s3cret"
NOW = 1_800_000_000.0


def alias_event(model: str = "m1", *, entity: str = "model_version_alias", action: str = "created") -> bytes:
    return json.dumps(
        {
            "entity": entity,
            "action": action,
            "timestamp": "2027-01-15T08:00:00+00:00",
            "data": {"name": model, "alias": "production", "version": "2"},
        }
    ).encode()


def delivery(
    body: bytes, *, delivery_id: str = "d-1", sent: float = NOW, secret: str = SECRET
) -> dict[str, str]:
    timestamp = str(int(sent))
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


@dataclass(frozen=True)
class Case:
    name: str
    headers: dict[str, str]
    body: bytes
    outcome: Outcome


BODY = alias_event()
DELETED = alias_event(action="deleted")
OTHER = alias_event(entity="registered_model")
SIGNED = delivery(BODY)
TWO_SIGNATURES = {**SIGNED, SIGNATURE_HEADER: f"v1,AAAA {SIGNED[SIGNATURE_HEADER]}"}
CASES = [
    Case("signed, fresh, an alias event", delivery(BODY), BODY, Outcome.ACCEPTED),
    Case("an alias deleted", delivery(DELETED), DELETED, Outcome.ACCEPTED),
    Case("signed with another secret", delivery(BODY, secret="other"), BODY, Outcome.BAD_SIGNATURE),
    Case("body changed after signing", delivery(BODY), alias_event("m2"), Outcome.BAD_SIGNATURE),
    Case("no signature", {**delivery(BODY), SIGNATURE_HEADER: ""}, BODY, Outcome.BAD_SIGNATURE),
    Case("a garbled signature", {**delivery(BODY), SIGNATURE_HEADER: "v1,!!!"}, BODY, Outcome.BAD_SIGNATURE),
    Case("another signature version", {**SIGNED, SIGNATURE_HEADER: "v0,abc"}, BODY, Outcome.BAD_SIGNATURE),
    Case("one of several signatures right", TWO_SIGNATURES, BODY, Outcome.ACCEPTED),
    Case("sent 10 minutes ago", delivery(BODY, sent=NOW - 600), BODY, Outcome.STALE),
    Case("sent 10 minutes ahead", delivery(BODY, sent=NOW + 600), BODY, Outcome.STALE),
    Case("sent 4 minutes ago", delivery(BODY, sent=NOW - 240), BODY, Outcome.ACCEPTED),
    Case("no delivery id", {TIMESTAMP_HEADER: "1", SIGNATURE_HEADER: "v1,x"}, BODY, Outcome.MALFORMED),
    Case("another event", delivery(OTHER), OTHER, Outcome.IGNORED_EVENT),
    Case("not JSON", delivery(b"nope"), b"nope", Outcome.MALFORMED),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_check(case: Case) -> None:
    assert check(case.headers, case.body, secret=SECRET, now=NOW, tolerance=300).outcome is case.outcome


def deliveries(outcome: Outcome) -> float:
    return REGISTRY.get_sample_value("aliasroll_webhook_deliveries_total", {"outcome": outcome.value}) or 0.0


class Refreshes:
    def __init__(self, followed: set[str]) -> None:
        self.followed = followed
        self.calls: list[tuple[str, float | None]] = []

    def __call__(self, model: str, *, moved_at: float | None = None) -> int:
        self.calls.append((model, moved_at))
        return 1 if model in self.followed else 0


@pytest.mark.parametrize(
    ("name", "headers", "body", "status", "outcome"),
    [
        ("bad signature", delivery(BODY, secret="other"), BODY, 401, Outcome.BAD_SIGNATURE),
        ("old timestamp", delivery(BODY, sent=NOW - 3600), BODY, 401, Outcome.STALE),
        ("unknown model", delivery(alias_event("nobody")), alias_event("nobody"), 200, Outcome.UNKNOWN_MODEL),
    ],
)
def test_a_refused_or_ignored_delivery_is_logged_counted_and_refreshes_nothing(
    name: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    outcome: Outcome,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refreshes = Refreshes({"m1"})
    receiver = WebhookReceiver(secret=SECRET, refresh=refreshes, clock=lambda: NOW)
    before = deliveries(outcome)
    with caplog.at_level(logging.INFO, logger="aliasroll.webhooks"):
        assert receiver.receive(headers, body) == (status, outcome)
    assert deliveries(outcome) == before + 1
    assert [r.message for r in caplog.records if outcome.value in r.message], name
    # An unknown model is asked about (that is how it is found unknown); nothing is woken.
    asked = [model for model, _ in refreshes.calls]
    assert asked == (["nobody"] if outcome is Outcome.UNKNOWN_MODEL else [])


def test_a_replayed_delivery_id_refreshes_once(caplog: pytest.LogCaptureFixture) -> None:
    refreshes = Refreshes({"m1"})
    receiver = WebhookReceiver(secret=SECRET, refresh=refreshes, clock=lambda: NOW)
    headers = delivery(BODY, delivery_id="same")
    assert receiver.receive(headers, BODY) == (200, Outcome.ACCEPTED)
    with caplog.at_level(logging.INFO, logger="aliasroll.webhooks"):
        assert receiver.receive(headers, BODY) == (200, Outcome.DUPLICATE)
    assert len(refreshes.calls) == 1
    assert refreshes.calls[0][0] == "m1"
    # The move's time is the payload's (finer than the header's whole seconds).
    assert refreshes.calls[0][1] == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert any("duplicate" in r.message for r in caplog.records)


def test_listen_addresses_say_what_to_fix() -> None:
    assert parse_listen("X", "0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen("X", "[::]:9") == ("::", 9)
    for wrong in ("8443", "host:", "host:http", "host:70000"):
        with pytest.raises(SystemExit, match=r"X=.* is not host:port"):
            parse_listen("X", wrong)


@pytest.fixture
def registry() -> Iterator[ScriptedRegistry]:
    scripted = ScriptedRegistry({"m1": {"production": "1", "canary": "2"}})
    yield scripted
    scripted.release.set()


async def test_a_pushed_change_is_read_at_once_and_counted_on_the_metrics_endpoint(
    registry: ScriptedRegistry,
) -> None:
    """Through real sockets: a delivery to the receiver wakes a follower polling once an hour, and
    /metrics shows the delivery and the registry calls."""
    poller = RegistryPoller(cast(RegistryClient, registry), batch_window=0.0)
    follower = Follower(poller, ENDPOINT, "m1", interval=3600.0)
    receiver = WebhookReceiver(secret=SECRET, refresh=poller.refresh)
    hook_port, metrics_port = free_port(), free_port()
    listeners = [
        Listener("webhooks", webhook_app(receiver), "127.0.0.1", hook_port),
        Listener("metrics", metrics_app(), "127.0.0.1", metrics_port),
    ]
    try:
        for listener in listeners:
            await listener.start()
        assert (await follower.snapshot()).aliases == {"production": "1", "canary": "2"}
        woken = follower.wakes
        with registry.lock:
            registry.aliases["m1"] = {"production": "2"}
        body = alias_event("m1")
        request = urllib.request.Request(
            f"http://127.0.0.1:{hook_port}{PATH}",
            data=body,
            headers={
                **delivery(body, delivery_id="real", sent=time.time()),
                "Content-Type": "application/json",
            },
        )
        answer: Any = await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert answer.status == 200
        assert json.loads(answer.read()) == {"outcome": "accepted"}
        await until(lambda: follower.wakes > woken)
        assert (await follower.snapshot()).aliases == {"production": "2"}
        assert poller.take_change(f"{ENDPOINT}/m1") is not None

        scrape: Any = await asyncio.to_thread(
            urllib.request.urlopen, f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        )
        text = scrape.read().decode()
        assert 'aliasroll_webhook_deliveries_total{outcome="accepted"}' in text
        assert 'aliasroll_registry_calls_total{call="model_aliases",outcome="ok"}' in text
        assert "aliasroll_registry_call_duration_seconds_bucket" in text
    finally:
        for listener in listeners:
            await listener.stop()
        await poller.close()


def test_push_and_metrics_are_off_unless_configured_and_the_secret_is_never_printed() -> None:
    assert OperatorConfig.from_env({}).webhook_secret is None
    assert OperatorConfig.from_env({}).metrics_listen is None
    config = OperatorConfig.from_env(
        {
            "ALIASROLL_WEBHOOK_SECRET": "hunter2",
            "ALIASROLL_WEBHOOK_LISTEN": "0.0.0.0:8081",
            "ALIASROLL_WEBHOOK_TOLERANCE": "60",
            "ALIASROLL_METRICS_LISTEN": "0.0.0.0:9102",
        }
    )
    assert (config.webhook_secret, config.webhook_listen, config.webhook_tolerance_seconds) == (
        "hunter2",
        "0.0.0.0:8081",
        60.0,
    )
    assert "hunter2" not in repr(config)


def test_delivery_ids_are_kept_for_a_while_and_in_bounds() -> None:
    seen = SeenDeliveries(keep_seconds=10, limit=2)
    assert seen.first_time("a", now=0)
    assert not seen.first_time("a", now=5)
    assert seen.first_time("a", now=11), "forgotten once older deliveries are refused as stale anyway"
    assert seen.first_time("b", now=12)
    assert seen.first_time("c", now=12)
    assert seen.first_time("a", now=12), "the oldest made room"
