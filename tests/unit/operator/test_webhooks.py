"""Registry webhooks: each registry signs with a secret of its own and wakes only its own endpoints;
delivery ids are UUIDs, kept as 16 bytes in a bounded memory; unauthenticated requests are rate
limited, capped in flight and in size, and checked on a loop of their own, never the operator's;
HTTPS from a mounted certificate. Whatever is refused or ignored is logged and counted, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY
from scripted_registry import Follower, ScriptedRegistry, until

from aliasroll import http as http_module
from aliasroll import webhooks
from aliasroll.config import OperatorConfig
from aliasroll.http import (
    Listener,
    ReceiverLimits,
    ServerTLS,
    ThreadedListener,
    TokenBuckets,
    metrics_app,
    on_this_loop,
    parse_listen,
    source_key,
    webhook_app,
)
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.scoped import ScopedPoller
from aliasroll.registry.types import Credentials, Endpoint
from aliasroll.webhooks import (
    DELIVERY_ID_HEADER,
    PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Outcome,
    Remembered,
    SeenDeliveries,
    WebhookConfigError,
    WebhookReceiver,
    WebhookRegistry,
    check,
    load_registries,
    parse_registries,
    sign,
    tracking_uri_key,
    weak_secret,
)
from mlflowserver import free_port

SECRET = "Zq3v9GmT1xLk8RwP0bYe5NcJ7uHs2DaF"  # 32 random-looking bytes
OTHER_SECRET = "p4Lr8XwQ2mZt6VbN1kJc9HsG3dYe7FaU"
NOW = 1_800_000_000.0
ID = "4f2c1e8a-9b3d-4c7e-8a1f-2b3c4d5e6f70"
TEAM_A = WebhookRegistry.named("team-a", secret=SECRET, tracking_uris=["http://registry-a:5000"])
TEAM_B = WebhookRegistry.named("team-b", secret=OTHER_SECRET, tracking_uris=["http://registry-b:5000/"])


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
    body: bytes, *, delivery_id: str = ID, sent: float = NOW, secret: str = SECRET
) -> dict[str, str]:
    timestamp = str(int(sent))
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, timestamp, body),
    }


def new_id() -> str:
    return str(uuid.uuid4())


# ---- one delivery: form, signature, time, event ---------------------------------------------------


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
LONG_ID = "a" * 8000
OK, BAD, MAL = Outcome.ACCEPTED, Outcome.BAD_SIGNATURE, Outcome.MALFORMED
CASES = [
    Case("signed, fresh, an alias event", delivery(BODY), BODY, OK),
    Case("an alias deleted", delivery(DELETED), DELETED, OK),
    Case("an upper-case UUID", delivery(BODY, delivery_id=ID.upper()), BODY, OK),
    Case("signed with another secret", delivery(BODY, secret=OTHER_SECRET), BODY, BAD),
    Case("body changed after signing", delivery(BODY), alias_event("m2"), BAD),
    Case("no signature", {**delivery(BODY), SIGNATURE_HEADER: ""}, BODY, BAD),
    Case("a garbled signature", {**delivery(BODY), SIGNATURE_HEADER: "v1,!!!"}, BODY, BAD),
    Case("another signature version", {**SIGNED, SIGNATURE_HEADER: "v0,abc"}, BODY, BAD),
    Case("one of several signatures right", TWO_SIGNATURES, BODY, OK),
    Case("900 signatures", {**SIGNED, SIGNATURE_HEADER: " ".join(["v1,AAAA"] * 900)}, BODY, MAL),
    Case("sent 10 minutes ago", delivery(BODY, sent=NOW - 600), BODY, Outcome.STALE),
    Case("sent 10 minutes ahead", delivery(BODY, sent=NOW + 600), BODY, Outcome.STALE),
    Case("sent 4 minutes ago", delivery(BODY, sent=NOW - 240), BODY, OK),
    Case("no delivery id", {TIMESTAMP_HEADER: "1", SIGNATURE_HEADER: "v1,x"}, BODY, MAL),
    Case("a signed 8,000-character delivery id", delivery(BODY, delivery_id=LONG_ID), BODY, MAL),
    Case("a delivery id that is not a UUID", delivery(BODY, delivery_id="d-1"), BODY, MAL),
    Case("a UUID without its dashes", delivery(BODY, delivery_id=ID.replace("-", "")), BODY, MAL),
    Case("a UUID in braces", delivery(BODY, delivery_id="{" + ID + "}"), BODY, MAL),
    Case("a UUID and more", delivery(BODY, delivery_id=ID + "0"), BODY, MAL),
    Case("a UUID with a newline after it", delivery(BODY, delivery_id=ID + "\n"), BODY, MAL),
    Case("a timestamp that is not a number", {**SIGNED, TIMESTAMP_HEADER: "soon"}, BODY, MAL),
    Case("a timestamp of 40 digits", {**SIGNED, TIMESTAMP_HEADER: "9" * 40}, BODY, MAL),
    Case("another event", delivery(OTHER), OTHER, Outcome.IGNORED_EVENT),
    Case("not JSON", delivery(b"nope"), b"nope", MAL),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_check(case: Case) -> None:
    verdict = check(case.headers, case.body, secret=SECRET, now=NOW, tolerance=300)
    assert verdict.outcome is case.outcome, verdict.reason
    if case.outcome is Outcome.ACCEPTED:
        assert verdict.delivery == uuid.UUID(case.headers[DELIVERY_ID_HEADER]).bytes


def test_a_malformed_id_is_refused_before_its_signature_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    original = webhooks.signature_matches
    monkeypatch.setattr(webhooks, "signature_matches", lambda *a: computed.append(a[1]) or original(*a))
    assert check(
        delivery(BODY, delivery_id=LONG_ID), BODY, secret=SECRET, now=NOW, tolerance=300
    ).outcome is (Outcome.MALFORMED)
    assert computed == []


def deliveries(outcome: Outcome) -> float:
    return REGISTRY.get_sample_value("aliasroll_webhook_deliveries_total", {"outcome": outcome.value}) or 0.0


class Refreshes:
    """The receiver's `refresh`: records what it was asked to read again, and where."""

    def __init__(self, followed: dict[str, set[str]] | None = None) -> None:
        # tracking URI key -> models followed there
        self.followed = followed if followed is not None else {"http://registry-a:5000": {"m1"}}
        self.calls: list[tuple[str, frozenset[str], float | None]] = []
        self.threads: list[int] = []

    async def __call__(self, model: str, *, tracking_uris: frozenset[str], moved_at: float | None) -> int:
        self.calls.append((model, tracking_uris, moved_at))
        self.threads.append(threading.get_ident())
        return sum(1 for uri in tracking_uris if model in self.followed.get(uri, set()))


def receiver_for(refreshes: Refreshes, **kwargs: Any) -> WebhookReceiver:
    return WebhookReceiver(registries=[TEAM_A, TEAM_B], refresh=refreshes, clock=lambda: NOW, **kwargs)


NOBODY = alias_event("nobody")


@pytest.mark.parametrize(
    ("name", "registry", "headers", "body", "status", "outcome"),
    [
        ("bad signature", TEAM_A, delivery(BODY, secret="x" * 40), BODY, 401, BAD),
        ("another registry's secret", TEAM_A, delivery(BODY, secret=OTHER_SECRET), BODY, 401, BAD),
        ("old timestamp", TEAM_A, delivery(BODY, sent=NOW - 3600), BODY, 401, Outcome.STALE),
        ("id not a UUID", TEAM_A, delivery(BODY, delivery_id=LONG_ID), BODY, 400, MAL),
        ("unknown model", TEAM_A, delivery(NOBODY), NOBODY, 200, Outcome.UNKNOWN_MODEL),
        (
            "followed on another registry",
            TEAM_B,
            delivery(BODY, secret=OTHER_SECRET),
            BODY,
            200,
            Outcome.UNKNOWN_MODEL,
        ),
    ],
)
async def test_a_refused_or_ignored_delivery_is_logged_counted_and_refreshes_nothing(
    name: str,
    registry: WebhookRegistry,
    headers: dict[str, str],
    body: bytes,
    status: int,
    outcome: Outcome,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refreshes = Refreshes()
    receiver = receiver_for(refreshes)
    before = deliveries(outcome)
    with caplog.at_level(logging.INFO, logger="aliasroll.webhooks"):
        assert await receiver.receive(registry, headers, body) == (status, outcome)
    assert deliveries(outcome) == before + 1
    [line] = [r.getMessage() for r in caplog.records if outcome.value in r.getMessage()]
    assert f"(registry {registry.name})" in line, name
    assert LONG_ID not in line, "nothing a sender chose is logged"
    # An unknown model is asked about (that is how it is found unknown), on this registry only.
    assert refreshes.calls == (
        [(json.loads(body)["data"]["name"], registry.tracking_uris, refreshes.calls[0][2])]
        if outcome is Outcome.UNKNOWN_MODEL
        else []
    )
    assert receiver.remembered(TEAM_A) + receiver.remembered(TEAM_B) == (outcome is Outcome.UNKNOWN_MODEL)


async def test_a_replayed_delivery_id_refreshes_once(caplog: pytest.LogCaptureFixture) -> None:
    refreshes = Refreshes()
    receiver = receiver_for(refreshes)
    headers = delivery(BODY)
    assert await receiver.receive(TEAM_A, headers, BODY) == (200, Outcome.ACCEPTED)
    with caplog.at_level(logging.INFO, logger="aliasroll.webhooks"):
        assert await receiver.receive(TEAM_A, headers, BODY) == (200, Outcome.DUPLICATE)
        # Written in capitals, the same id is the same delivery (signed again: only a secret holder can).
        upper = delivery(BODY, delivery_id=ID.upper())
        assert await receiver.receive(TEAM_A, upper, BODY) == (200, Outcome.DUPLICATE)
    assert [(model, uris) for model, uris, _ in refreshes.calls] == [
        ("m1", frozenset({"http://registry-a:5000"}))
    ]
    # The move's time is the payload's (finer than the header's whole seconds).
    assert refreshes.calls[0][2] == dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()
    assert any("duplicate" in r.getMessage() for r in caplog.records)


async def test_a_wake_the_operator_does_not_take_is_retried_by_mlflow_and_not_a_replay() -> None:
    calls = 0

    async def refresh(model: str, *, tracking_uris: frozenset[str], moved_at: float | None) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError
        return 1

    receiver = WebhookReceiver(registries=[TEAM_A], refresh=refresh, clock=lambda: NOW)
    assert await receiver.receive(TEAM_A, delivery(BODY), BODY) == (503, Outcome.UNAVAILABLE)
    assert await receiver.receive(TEAM_A, delivery(BODY), BODY) == (200, Outcome.ACCEPTED)


# ---- per-registry secrets and where a delivery wakes ------------------------------------------------


async def test_each_registry_is_checked_with_its_own_secret_and_wakes_only_its_tracking_uris() -> None:
    refreshes = Refreshes({"http://registry-a:5000": {"m1"}, "http://registry-b:5000": {"m1"}})
    receiver = receiver_for(refreshes)
    assert receiver.registry(f"{PATH}/team-a") is TEAM_A
    assert receiver.registry(PATH) is None
    assert receiver.registry(f"{PATH}/team-c") is None
    # B's secret does not open A's path, nor A's B's.
    assert await receiver.receive(TEAM_A, delivery(BODY, secret=OTHER_SECRET), BODY) == (
        401,
        Outcome.BAD_SIGNATURE,
    )
    assert await receiver.receive(TEAM_B, delivery(BODY, secret=SECRET), BODY) == (401, Outcome.BAD_SIGNATURE)
    assert refreshes.calls == []
    assert await receiver.receive(TEAM_B, delivery(BODY, secret=OTHER_SECRET), BODY) == (
        200,
        Outcome.ACCEPTED,
    )
    assert [uris for _, uris, _ in refreshes.calls] == [frozenset({"http://registry-b:5000"})]


class RefreshSpy(ScopedPoller):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refreshed: list[tuple[str, Endpoint]] = []

    def refresh(self, model: str, endpoint: Endpoint | None = None, *, moved_at: float | None = None) -> int:
        assert endpoint is not None, "a push is never read on every registry"
        self.refreshed.append((model, endpoint))
        return super().refresh(model, endpoint, moved_at=moved_at)


@pytest.fixture
def scripted() -> Iterator[ScriptedRegistry]:
    registry = ScriptedRegistry({"m1": {"production": "1"}, "m2": {"production": "4"}})
    yield registry
    registry.release.set()


async def test_the_scoped_poller_reads_a_pushed_model_on_the_signing_registrys_endpoints_only(
    scripted: ScriptedRegistry,
) -> None:
    """A registry is a tracking URI; an endpoint is a tracking URI and credentials. Every endpoint of
    A following m1 (whatever its credentials) is read; B's, following the same model, is not."""
    poller = RefreshSpy(cast(RegistryClient, scripted), batch_window=0.0)
    a_anonymous = Endpoint("http://registry-a:5000")
    a_with_token = Endpoint("HTTP://Registry-A:5000/", Credentials(token="t"))
    b = Endpoint("http://registry-b:5000")
    followers = [
        Follower(poller, a_anonymous, "m1", 3600.0),
        Follower(poller, a_with_token, "m1", 3600.0),
        Follower(poller, a_anonymous, "m2", 3600.0),
        Follower(poller, b, "m1", 3600.0),
    ]
    try:
        for follower in followers:
            await follower.snapshot()
        woken = poller.refresh_registry("m1", tracking_uris=TEAM_A.tracking_uris, moved_at=None)
        assert woken == 2
        assert sorted(poller.refreshed, key=str) == sorted(
            [("m1", a_anonymous), ("m1", a_with_token)], key=str
        )
        assert (
            poller.refresh_registry("m1", tracking_uris=frozenset({"http://elsewhere:5000"}), moved_at=None)
            == 0
        )
        # A follower that moves to another model and back is still found (and one that left is not).
        await Follower(poller, b, "m2", 3600.0).snapshot()  # the subscriber id names the model: a new one
        poller.unsubscribe(f"{b}/m1")
        assert poller.refresh_registry("m1", tracking_uris=TEAM_B.tracking_uris, moved_at=None) == 0
        assert poller.refresh_registry("m2", tracking_uris=TEAM_B.tracking_uris, moved_at=None) == 1
    finally:
        await poller.close()


async def test_a_subscriber_moving_between_models_stays_known(scripted: ScriptedRegistry) -> None:
    poller = ScopedPoller(cast(RegistryClient, scripted), batch_window=0.0)
    endpoint = Endpoint("http://registry-a:5000")
    try:
        for model in ("m1", "m2"):
            await poller.subscribe(
                subscriber="uid-1", endpoint=endpoint, model=model, interval=3600, wake=lambda: None
            )
        assert poller.refresh_registry("m1", tracking_uris=TEAM_A.tracking_uris, moved_at=None) == 0
        assert poller.refresh_registry("m2", tracking_uris=TEAM_A.tracking_uris, moved_at=None) == 1
    finally:
        await poller.close()


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("HTTP://MLflow:5000/", "http://mlflow:5000"),
        ("http://mlflow:80/", "http://mlflow"),
        ("https://mlflow.example.com:443/tracking/", "https://mlflow.example.com/tracking"),
        ("http://[fd00::1]:5000", "http://[fd00::1]:5000"),
        ("http://mlflow:5000/?x=1", "http://mlflow:5000?x=1"),
    ],
)
def test_tracking_uris_name_a_registry_whatever_their_spelling(uri: str, key: str) -> None:
    assert tracking_uri_key(uri) == key


# ---- configuration: one secret per registry, strong, not shared --------------------------------------

A_URI = "http://mlflow.team-a.svc:5000"


def one(secret: Any = SECRET, uri: Any = A_URI, **more: Any) -> dict[str, Any]:
    return {"team-a": {"trackingUri": uri, "secret": secret, **more}}


@pytest.mark.parametrize(
    ("name", "document", "error"),
    [
        ("not a mapping", ["team-a"], "expected a mapping of registry names"),
        ("empty", {}, "expected a mapping of registry names"),
        ("a name that is not a DNS label", {"Team_A": one()["team-a"]}, "a DNS label"),
        ("a key missing", {"team-a": {"secret": SECRET}}, "exactly the keys trackingUri and secret"),
        ("a key too many", one(x=1), "exactly the keys"),
        ("a numeric secret", one(10**40), "must be a string"),
        ("a short secret", one("hunter2"), "7 bytes; at least 32"),
        ("a 31-byte secret", one(SECRET[:31]), "31 bytes; at least 32"),
        ("a word repeated", one("password" * 4), "a shorter string repeated"),
        ("one character over and over", one("a" * 63 + "b"), "too few characters"),
        ("two characters", one("ab" * 20 + "ba" * 20), "too few characters"),
        ("not a URI", one(uri="mlflow"), "trackingUri must be"),
        ("an empty list of URIs", one(uri=[]), "trackingUri must be"),
        (
            "a shared secret",
            {**one(), "team-b": {"trackingUri": "http://b:5000", "secret": SECRET}},
            "registries 'team-a' and 'team-b' share a secret: each needs its own",
        ),
        (
            "a registry claimed twice",
            {**one(), "team-b": {"trackingUri": A_URI + "/", "secret": OTHER_SECRET}},
            "tracking URI http://mlflow.team-a.svc:5000 is claimed by registries 'team-a' and 'team-b'",
        ),
    ],
)
def test_registry_settings_that_are_refused_say_why(name: str, document: Any, error: str) -> None:
    with pytest.raises(WebhookConfigError) as raised:
        parse_registries(document, source="registries.yaml")
    assert error in str(raised.value), name
    assert SECRET not in str(raised.value), "a secret is never printed"


@pytest.mark.parametrize(
    "secret",
    [
        "Zq3v9GmT1xLk8RwP0bYe5NcJ7uHs2DaF",  # 32 characters, 62 possible each
        "q8n6Zb0cW3kD+u1yRr5J4vT2pX7mH9sLgA6eF3oQ0iE=",  # openssl rand -base64 32
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # openssl rand -hex 32
        "3f9a2c7e1b8d4f60a5c2e9b7d1f3a8c4",  # openssl rand -hex 16: 32 characters of 16 possible
    ],
)
def test_random_secrets_are_strong_enough(secret: str) -> None:
    assert weak_secret(secret) is None


def test_the_registries_file_names_each_registry_its_uris_and_its_secret(tmp_path: Path) -> None:
    path = tmp_path / "registries.yaml"
    path.write_text(
        f"team-a:\n  trackingUri: {A_URI}\n  secret: {SECRET}\n"
        "team-b:\n  trackingUri: [http://b:5000, 'https://mlflow.b.example.com/']\n"
        f"  secret: '{OTHER_SECRET}'\n"
    )
    a, b = load_registries(registries_file=str(path), secret=None, tracking_uri=None)
    assert (a.name, a.path, a.tracking_uris) == ("team-a", f"{PATH}/team-a", frozenset({A_URI}))
    assert b.tracking_uris == frozenset({"http://b:5000", "https://mlflow.b.example.com"})
    assert SECRET not in repr(a)
    # JSON is YAML too.
    path.write_text(json.dumps({"team-a": {"trackingUri": A_URI, "secret": SECRET}}))
    assert load_registries(registries_file=str(path), secret=None, tracking_uri=None)[0].secret == SECRET


def test_a_registries_file_that_does_not_parse_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "registries.yaml"
    path.write_text(f"team-a:\n  secret: {SECRET}\n  trackingUri: [unclosed\n")
    with pytest.raises(WebhookConfigError, match=r"not readable as YAML or JSON \(line \d+\)") as raised:
        load_registries(registries_file=str(path), secret=None, tracking_uri=None)
    assert SECRET not in str(raised.value)


def test_without_the_registries_file_push_is_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Deployment mounts an optional Secret: an install without it runs, polling alone."""
    missing = str(tmp_path / "registries.yaml")
    with caplog.at_level(logging.WARNING, logger="aliasroll.webhooks"):
        assert load_registries(registries_file=missing, secret=None, tracking_uri=None) == ()
    assert "no such file" in caplog.text
    assert load_registries(registries_file=None, secret=None, tracking_uri=None) == ()


def test_the_single_secret_setting_is_one_registry_on_the_old_path_and_needs_its_tracking_uri(
    tmp_path: Path,
) -> None:
    [single] = load_registries(
        registries_file=None, secret=SECRET, tracking_uri=f"{A_URI}, http://mlflow:5000/"
    )
    assert (single.name, single.path) == ("default", PATH)
    assert single.tracking_uris == frozenset({A_URI, "http://mlflow:5000"})
    with pytest.raises(
        WebhookConfigError, match="without ALIASROLL_WEBHOOK_TRACKING_URI: a delivery wakes only"
    ):
        load_registries(registries_file=None, secret=SECRET, tracking_uri=None)
    with pytest.raises(WebhookConfigError, match="ALIASROLL_WEBHOOK_SECRET is too weak: it is 1 bytes"):
        load_registries(registries_file=None, secret="a", tracking_uri=A_URI)
    both = tmp_path / "registries.yaml"
    both.write_text(json.dumps({"team-a": {"trackingUri": A_URI, "secret": OTHER_SECRET}}))
    with pytest.raises(WebhookConfigError, match="are both set: keep one"):
        load_registries(registries_file=str(both), secret=SECRET, tracking_uri=A_URI)


def test_push_and_metrics_are_off_unless_configured_and_the_secret_is_never_printed() -> None:
    config = OperatorConfig.from_env({})
    assert (config.webhook_secret, config.webhook_registries_file, config.metrics_listen) == (
        None,
        None,
        None,
    )
    assert (config.webhook_tls_cert, config.webhook_tls_key) == (None, None)
    config = OperatorConfig.from_env(
        {
            "ALIASROLL_WEBHOOK_REGISTRIES": "/etc/aliasroll/webhooks/registries.yaml",
            "ALIASROLL_WEBHOOK_SECRET": "hunter2",
            "ALIASROLL_WEBHOOK_TRACKING_URI": A_URI,
            "ALIASROLL_WEBHOOK_LISTEN": "0.0.0.0:8081",
            "ALIASROLL_WEBHOOK_TOLERANCE": "60",
            "ALIASROLL_WEBHOOK_TLS_CERT": "/tls/tls.crt",
            "ALIASROLL_WEBHOOK_TLS_KEY": "/tls/tls.key",
            "ALIASROLL_WEBHOOK_RATE_PER_SOURCE": "5",
            "ALIASROLL_WEBHOOK_RATE_TOTAL": "50",
            "ALIASROLL_METRICS_LISTEN": "0.0.0.0:9102",
        }
    )
    assert config.webhook_registries_file == "/etc/aliasroll/webhooks/registries.yaml"
    assert (config.webhook_secret, config.webhook_tracking_uri) == ("hunter2", A_URI)
    assert (config.webhook_listen, config.webhook_tolerance_seconds) == ("0.0.0.0:8081", 60.0)
    assert (config.webhook_tls_cert, config.webhook_tls_key) == ("/tls/tls.crt", "/tls/tls.key")
    assert (config.webhook_rate_per_source, config.webhook_rate_total) == (5.0, 50.0)
    assert "hunter2" not in repr(config)


def test_listen_addresses_say_what_to_fix() -> None:
    assert parse_listen("X", "0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen("X", "[::]:9") == ("::", 9)
    for wrong in ("8443", "host:", "host:http", "host:70000"):
        with pytest.raises(SystemExit, match=r"X=.* is not host:port"):
            parse_listen("X", wrong)


# ---- the replay memory: 16 bytes an id, bounded, expiring with the window ---------------------------


def uuid_bytes(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_delivery_ids_are_kept_until_their_timestamp_leaves_the_window_and_in_bounds() -> None:
    seen = SeenDeliveries(limit=2)
    assert seen.remember(uuid_bytes(1), until=10, now=0) is Remembered.NEW
    assert seen.remember(uuid_bytes(1), until=10, now=5) is Remembered.DUPLICATE
    assert seen.remember(uuid_bytes(2), until=20, now=5) is Remembered.NEW
    # Full: a new id is refused (MLflow retries a 429), none is forgotten before its time.
    assert seen.remember(uuid_bytes(3), until=20, now=6) is Remembered.FULL
    assert seen.remember(uuid_bytes(1), until=10, now=6) is Remembered.DUPLICATE
    # Once 1's timestamp is out of the window (a replay is stale anyway), it makes room.
    assert seen.remember(uuid_bytes(3), until=30, now=10) is Remembered.NEW
    assert seen.remember(uuid_bytes(1), until=40, now=11) is Remembered.FULL
    assert len(seen) == 2
    # An id expiring early behind one expiring late is found when room is needed.
    seen = SeenDeliveries(limit=2)
    seen.remember(uuid_bytes(1), until=100, now=0)
    seen.remember(uuid_bytes(2), until=5, now=0)
    assert seen.remember(uuid_bytes(3), until=100, now=6) is Remembered.NEW
    with pytest.raises(ValueError, match="16 bytes"):
        seen.remember(b"a" * 8000, until=1, now=0)


def test_the_replay_memory_is_bounded_in_bytes() -> None:
    """10,000 ids (the default bound per registry) take well under 2 MB: the 8,000-character ids the
    review measured would have taken 763 MiB for 100,000."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        seen = SeenDeliveries()
        for _ in range(webhooks.SEEN_LIMIT + 100):
            seen.remember(uuid.uuid4().bytes, until=1e12, now=0)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(seen) == webhooks.SEEN_LIMIT
    assert used < 2 << 20, f"{used / 2**20:.1f} MiB"


async def test_a_registry_whose_memory_is_full_is_told_to_retry_and_others_are_not_affected() -> None:
    refreshes = Refreshes({"http://registry-a:5000": {"m1"}, "http://registry-b:5000": {"m1"}})
    receiver = receiver_for(refreshes, seen_limit=3)
    for _ in range(3):
        assert await receiver.receive(TEAM_A, delivery(BODY, delivery_id=new_id()), BODY) == (
            200,
            Outcome.ACCEPTED,
        )
    assert await receiver.receive(TEAM_A, delivery(BODY, delivery_id=new_id()), BODY) == (
        429,
        Outcome.MEMORY_FULL,
    )
    b = delivery(BODY, delivery_id=new_id(), secret=OTHER_SECRET)
    assert await receiver.receive(TEAM_B, b, BODY) == (200, Outcome.ACCEPTED)
    assert receiver.remembered(TEAM_A) == 3


# ---- the listener: limits before any body is read ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def make(receiver: WebhookReceiver, **kwargs: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(webhook_app(receiver, **kwargs)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def post(
    client: TestClient[Any, Any], path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    answer = await client.post(path, data=body, headers=headers)
    return answer.status, (await answer.json())["outcome"]


async def test_requests_past_the_rate_per_source_and_overall_are_refused_429_unread(
    client_for: Any,
) -> None:
    refreshes = Refreshes()
    receiver = WebhookReceiver(registries=[TEAM_A], refresh=refreshes)
    clock = Clock()
    limits = ReceiverLimits(per_source=2.0, total=100.0, burst_seconds=1.0)
    client = await client_for(receiver, limits=limits, clock=clock)
    path = f"{PATH}/team-a"

    def signed() -> dict[str, str]:
        return delivery(BODY, delivery_id=new_id(), sent=time.time())

    before = deliveries(Outcome.RATE_LIMITED)
    assert await post(client, path, BODY, signed()) == (200, "accepted")
    assert await post(client, path, BODY, signed()) == (200, "accepted")
    answer = await client.post(path, data=BODY, headers=signed())
    assert (answer.status, answer.headers["Retry-After"]) == (429, "1")
    assert (await answer.json())["outcome"] == "rate_limited"
    # Unsigned or oversized, it is the same: nothing is read or checked.
    assert await post(client, path, b"x" * (1 << 20), {}) == (429, "rate_limited")
    assert deliveries(Outcome.RATE_LIMITED) == before + 2
    assert len(refreshes.calls) == 2
    clock.now += 0.5  # a token back
    assert await post(client, path, BODY, signed()) == (200, "accepted")


async def test_requests_past_the_overall_rate_are_refused_whatever_their_source(client_for: Any) -> None:
    receiver = WebhookReceiver(registries=[TEAM_A], refresh=Refreshes())
    clock = Clock()
    client = await client_for(
        receiver, limits=ReceiverLimits(per_source=100.0, total=1.0, burst_seconds=2.0), clock=clock
    )
    for _ in range(2):
        assert (await post(client, f"{PATH}/team-a", b"{}", {}))[0] == 400  # no id: malformed, but admitted
    assert await post(client, f"{PATH}/team-a", b"{}", {}) == (429, "rate_limited")


def test_buckets_refill_at_their_rate_and_forget_the_least_recent_source() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2.0, keys=2, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [True, True, False]
    clock.now += 1.0
    assert [buckets.take("a"), buckets.take("a")] == [True, False]
    buckets.take("b")
    buckets.take("c")  # more sources than remembered: a's bucket goes (it comes back full)
    assert buckets.take("a")


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.7", "10.0.0.7"),
        ("::ffff:10.0.0.7", "10.0.0.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        (None, ""),
    ],
)
def test_an_ipv6_sender_is_limited_by_its_64(address: str | None, key: str) -> None:
    assert source_key(address) == key


async def raw_request(port: int, head: bytes, *, body: bytes = b"") -> str:
    """Sends `head` (and `body`) on a new connection; returns the answer's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def head(path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def threaded() -> AsyncIterator[Any]:
    listeners: list[ThreadedListener] = []

    async def start(app: Any, *, tls: ServerTLS | None = None, **kwargs: Any) -> int:
        port = free_port()
        listener = ThreadedListener("webhooks", app, "127.0.0.1", port, tls=tls, **kwargs)
        await listener.start()
        listeners.append(listener)
        return port

    yield start
    for listener in listeners:
        await listener.stop()


async def test_a_body_over_the_cap_is_refused_413_before_it_is_sent(threaded: Any) -> None:
    """A Content-Length over 16 KiB gets its answer at once: the body is never waited for. MLflow's
    alias event is about 200 bytes."""
    receiver = WebhookReceiver(registries=[TEAM_A], refresh=Refreshes())
    port = await threaded(webhook_app(receiver))
    status = await raw_request(port, head(f"{PATH}/team-a", 1 << 20))
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    # Sent without a length (chunked), it is cut off past the cap.
    chunk = b"x" * ((16 << 10) + 1)
    chunked = f"POST {PATH}/team-a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    status = await raw_request(port, chunked, body=f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert status.startswith("HTTP/1.1 413")


async def test_requests_in_flight_are_capped_and_a_slow_body_is_cut_off(threaded: Any) -> None:
    receiver = WebhookReceiver(registries=[TEAM_A], refresh=Refreshes())
    port = await threaded(webhook_app(receiver, limits=ReceiverLimits(in_flight=1, body_seconds=1.0)))
    before = deliveries(Outcome.SLOW)
    # A sender that promises 100 bytes and sends 10 holds the one slot ...
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(f"{PATH}/team-a", 100) + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(0.2)
    # ... so the next is told to come back, at once.
    status = await raw_request(port, head(f"{PATH}/team-a", 2), body=b"{}")
    assert status == "HTTP/1.1 429 Too Many Requests"
    # Until its time is up.
    assert (await asyncio.wait_for(reader.readline(), 5)).decode().startswith("HTTP/1.1 408")
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert deliveries(Outcome.SLOW) == before + 1
    status = await raw_request(port, head(f"{PATH}/team-a", 2), body=b"{}")
    assert status.startswith("HTTP/1.1 400")  # admitted again (and malformed)


async def test_checks_run_off_the_operators_loop_and_only_the_wake_runs_on_it(
    threaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver has a loop of its own: a check that takes 0.5 s (a flood of requests, a slow hash)
    holds that loop, never the one that renews the lease. The wake is handed over to the latter."""
    checked_on: list[int] = []
    original = webhooks.signature_matches

    def slow_signature_matches(*args: Any) -> bool:
        checked_on.append(threading.get_ident())
        time.sleep(0.5)
        return original(*args)

    monkeypatch.setattr(webhooks, "signature_matches", slow_signature_matches)
    woken_on: list[int] = []

    def refresh(model: str, *, tracking_uris: frozenset[str], moved_at: float | None) -> int:
        woken_on.append(threading.get_ident())
        return 1

    receiver = WebhookReceiver(registries=[TEAM_A], refresh=on_this_loop(refresh))
    port = await threaded(webhook_app(receiver))
    longest_gap = 0.0

    async def heartbeat() -> None:
        nonlocal longest_gap
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            longest_gap = max(longest_gap, time.monotonic() - last)
            last = time.monotonic()

    beat = asyncio.create_task(heartbeat())
    body = BODY
    headers = {**delivery(body, delivery_id=new_id(), sent=time.time()), "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}/team-a", data=body, headers=headers)
    answer: Any = await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    beat.cancel()
    assert answer.status == 200
    assert checked_on
    assert checked_on[0] != threading.get_ident()
    assert woken_on == [threading.get_ident()]
    assert longest_gap < 0.4, f"the operator's loop stood still for {longest_gap:.2f} s"


# ---- through real sockets: push, metrics, the old single-secret path, TLS ----------------------------


async def test_a_pushed_change_is_read_at_once_on_its_registry_and_counted_on_the_metrics_endpoint(
    scripted: ScriptedRegistry, threaded: Any
) -> None:
    """A delivery to team-a's path wakes team-a's follower polling once an hour, not team-b's, which
    follows the same model name; /metrics shows the delivery and the registry calls."""
    poller = ScopedPoller(cast(RegistryClient, scripted), batch_window=0.0)
    on_a = Follower(poller, Endpoint("http://registry-a:5000"), "m1", interval=3600.0)
    on_b = Follower(poller, Endpoint("http://registry-b:5000"), "m1", interval=3600.0)
    receiver = WebhookReceiver(registries=[TEAM_A, TEAM_B], refresh=on_this_loop(poller.refresh_registry))
    hook_port = await threaded(webhook_app(receiver))
    metrics_port = free_port()
    metrics_listener = Listener("metrics", metrics_app(), "127.0.0.1", metrics_port)
    try:
        await metrics_listener.start()
        assert (await on_a.snapshot()).aliases == {"production": "1"}
        assert (await on_b.snapshot()).aliases == {"production": "1"}
        woken_a, woken_b = on_a.wakes, on_b.wakes
        with scripted.lock:
            scripted.aliases["m1"] = {"production": "2"}  # both registries' answer, were they read
        body = alias_event("m1")
        request = urllib.request.Request(
            f"http://127.0.0.1:{hook_port}{PATH}/team-a",
            data=body,
            headers={
                **delivery(body, delivery_id=new_id(), sent=time.time()),
                "Content-Type": "application/json",
            },
        )
        answer: Any = await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        assert answer.status == 200
        assert json.loads(answer.read()) == {"outcome": "accepted"}
        await until(lambda: on_a.wakes > woken_a)
        assert (await on_a.snapshot()).aliases == {"production": "2"}
        await asyncio.sleep(0.2)
        assert on_b.wakes == woken_b, "team-b's registry was not read"

        scrape: Any = await asyncio.to_thread(
            urllib.request.urlopen, f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        )
        text = scrape.read().decode()
        assert 'aliasroll_webhook_deliveries_total{outcome="accepted"}' in text
        assert 'aliasroll_registry_calls_total{call="model_aliases",outcome="ok"}' in text
    finally:
        await metrics_listener.stop()
        await poller.close()


async def test_the_single_secret_setting_keeps_the_old_path_and_an_unknown_path_is_404(threaded: Any) -> None:
    [single] = load_registries(registries_file=None, secret=SECRET, tracking_uri="http://registry-a:5000")
    refreshes = Refreshes()
    port = await threaded(webhook_app(WebhookReceiver(registries=[single], refresh=refreshes)))
    body = BODY
    ok = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}",
        data=body,
        headers=delivery(body, delivery_id=new_id(), sent=time.time()),
    )
    assert (await asyncio.to_thread(urllib.request.urlopen, ok, timeout=5)).status == 200
    wrong = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}/team-a", data=body, headers=dict(ok.headers)
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, wrong, timeout=5)
    assert refused.value.code == 404
    assert json.loads(refused.value.read()) == {"outcome": "unknown_registry"}
    assert len(refreshes.calls) == 1


def self_signed(directory: Path, *, name: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (as cert-manager's Secret has it: tls.crt, tls.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


async def test_the_receiver_serves_https_from_a_mounted_certificate_and_reloads_it(
    tmp_path: Path, threaded: Any
) -> None:
    cert, key = self_signed(tmp_path, name="first")
    tls = ServerTLS(cert, key)
    refreshes = Refreshes()
    port = await threaded(webhook_app(WebhookReceiver(registries=[TEAM_A], refresh=refreshes)), tls=tls)

    def deliver(trust: str) -> tuple[int, str]:
        body = BODY
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{PATH}/team-a",
            data=body,
            headers=delivery(body, delivery_id=new_id(), sent=time.time()),
        )
        context = ssl.create_default_context(cafile=trust)
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return answer.status, json.loads(answer.read())["outcome"]

    assert await asyncio.to_thread(deliver, cert) == (200, "accepted")
    plain = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}/team-a", data=b"{}")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(urllib.request.urlopen, plain, timeout=5)
    # cert-manager renews the Secret in place: the next look loads it, new connections get it.
    first = renew(tmp_path, cert, key)
    assert tls.reload_if_changed()
    assert not tls.reload_if_changed()
    assert await asyncio.to_thread(deliver, cert) == (200, "accepted")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(deliver, first)


def renew(tmp_path: Path, cert: str, key: str) -> str:
    """Writes a new certificate and key over the old (as the kubelet updates a Secret's volume);
    returns a copy of the old certificate."""
    first = tmp_path / "first.crt"
    first.write_text(Path(cert).read_text())
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new_cert, new_key = self_signed(renewed, name="second")
    Path(cert).write_text(Path(new_cert).read_text())
    Path(key).write_text(Path(new_key).read_text())
    return str(first)


def test_tls_files_that_do_not_load_are_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ValueError, match="cannot serve HTTPS"):
        ServerTLS(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))


async def test_an_unparsable_request_is_answered_400_without_a_traceback_in_the_log(
    threaded: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A header line over aiohttp's 8 KiB limit: refused by the parser before any handler; a stranger
    sending many must not fill the operator's log with a traceback each."""
    receiver = WebhookReceiver(registries=[TEAM_A], refresh=Refreshes())
    port = await threaded(webhook_app(receiver))
    dropped = http_module._UnparsableRequests.dropped
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        for _ in range(3):
            status = await raw_request(port, head(f"{PATH}/team-a", 2, {"X-Big": "x" * 10_000}), body=b"{}")
            assert " 400 " in status, status
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert http_module._UnparsableRequests.dropped >= dropped + 3
