"""MLflow registry webhooks: a push that brings the next registry read forward.

MLflow (3.3+) posts `model_version_alias.created` (an alias set or moved) and
`model_version_alias.deleted`, signed with the webhook's secret. A delivery that is signed, fresh and
new wakes the poller for that model at once; nothing else changes: the read goes through the usual
comparison and the resources' passes stay level-based. Delivery is best effort on MLflow's side
(no outbox, a webhook list cached for 60 s), so polling stays the safety net.

Refused (answered 4xx, logged, counted, nothing else): a bad or missing signature, a timestamp
outside the tolerance, a malformed delivery. Ignored (answered 200 so MLflow does not retry): a
replay of a delivery id already accepted, an event of another kind, a model nobody follows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from aliasroll import metrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_ENTITY = "model_version_alias"
ALIAS_ACTIONS = frozenset({"created", "deleted"})
PATH = "/webhooks/mlflow"

# Refreshes one model on every registry the operator follows it on; returns how many subscriptions
# were woken (0: nobody follows it). `moved_at` is the registry's time of the move.
Refresh = Callable[..., int]


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    MALFORMED = "malformed"
    UNKNOWN_MODEL = "unknown_model"
    IGNORED_EVENT = "ignored_event"


# Refusals are 4xx (MLflow retries only 429 and 5xx); whatever is ignored is a 200.
STATUS = {
    Outcome.ACCEPTED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.UNKNOWN_MODEL: 200,
    Outcome.IGNORED_EVENT: 200,
    Outcome.BAD_SIGNATURE: 401,
    Outcome.STALE: 401,
    Outcome.MALFORMED: 400,
}


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature MLflow sends: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_matches(secret: str, delivery_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """True if any of the space-separated `v1,<base64>` signatures in `header` is right."""
    expected = base64.b64decode(sign(secret, delivery_id, timestamp, body).split(",", 1)[1])
    for candidate in header.split():
        version, _, encoded = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            return True
    return False


@dataclass(frozen=True)
class Verdict:
    """What a delivery amounts to; `model` is set when it names a model, `reason` says why not."""

    outcome: Outcome
    reason: str = ""
    model: str | None = None
    alias: str | None = None
    moved_at: float | None = None


def check(headers: Mapping[str, str], body: bytes, *, secret: str, now: float, tolerance: float) -> Verdict:
    """Verifies signature and timestamp and reads the event (duplicates are the receiver's job).

    The signature is checked first, so an unsigned sender learns nothing about the rest.
    """
    delivery_id = headers.get(DELIVERY_ID_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not delivery_id or not timestamp:
        return Verdict(Outcome.MALFORMED, f"no {DELIVERY_ID_HEADER} or {TIMESTAMP_HEADER} header")
    if not signature:
        return Verdict(
            Outcome.BAD_SIGNATURE, f"no {SIGNATURE_HEADER} header (create the webhook with the secret)"
        )
    if not signature_matches(secret, delivery_id, timestamp, body, signature):
        return Verdict(Outcome.BAD_SIGNATURE, "the signature does not match the webhook secret")
    try:
        sent = int(timestamp)
    except ValueError:
        return Verdict(Outcome.MALFORMED, f"{TIMESTAMP_HEADER}={timestamp!r} is not a Unix time")
    if abs(now - sent) > tolerance:
        return Verdict(
            Outcome.STALE,
            f"sent {now - sent:.0f} s ago (tolerance {tolerance:.0f} s; are the clocks in sync?)",
        )
    try:
        event = json.loads(body)
    except ValueError:
        return Verdict(Outcome.MALFORMED, "the body is not JSON")
    if not isinstance(event, dict):
        return Verdict(Outcome.MALFORMED, "the body is not a JSON object")
    if event.get("entity") != ALIAS_ENTITY or event.get("action") not in ALIAS_ACTIONS:
        return Verdict(Outcome.IGNORED_EVENT, f"event {event.get('entity')}.{event.get('action')}")
    data = event.get("data")
    model = data.get("name") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        return Verdict(Outcome.MALFORMED, "an alias event without data.name")
    alias = data.get("alias") if isinstance(data, dict) else None
    return Verdict(
        Outcome.ACCEPTED,
        model=model,
        alias=alias if isinstance(alias, str) else None,
        moved_at=_event_time(event.get("timestamp"), default=float(sent)),
    )


def _event_time(value: object, *, default: float) -> float:
    # The payload's ISO time is finer than the header's whole seconds.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return default


class SeenDeliveries:
    """Delivery ids accepted within the tolerance (older ones are refused as stale anyway)."""

    def __init__(self, *, keep_seconds: float, limit: int = 100_000) -> None:
        self._keep = keep_seconds
        self._limit = limit
        self._seen: dict[str, float] = {}  # id -> expiry; insertion order is expiry order

    def first_time(self, delivery_id: str, *, now: float) -> bool:
        while self._seen and next(iter(self._seen.values())) <= now:  # the oldest first
            del self._seen[next(iter(self._seen))]
        if delivery_id in self._seen:
            return False
        while len(self._seen) >= self._limit:  # bounded, whatever a sender floods us with
            del self._seen[next(iter(self._seen))]
        self._seen[delivery_id] = now + self._keep
        return True


class WebhookReceiver:
    def __init__(
        self,
        *,
        secret: str,
        refresh: Refresh,
        tolerance: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._refresh = refresh
        self._tolerance = tolerance
        self._clock = clock
        # Twice the tolerance: a timestamp may be that far ahead and still pass.
        self._seen = SeenDeliveries(keep_seconds=2 * tolerance)

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Outcome]:
        """Handles one delivery; returns the HTTP status to answer and the outcome (counted, logged)."""
        now = self._clock()
        verdict = check(headers, body, secret=self._secret, now=now, tolerance=self._tolerance)
        delivery_id = headers.get(DELIVERY_ID_HEADER, "")
        outcome = verdict.outcome
        if outcome is Outcome.ACCEPTED and not self._seen.first_time(delivery_id, now=now):
            outcome = Outcome.DUPLICATE
            verdict = Verdict(outcome, "this delivery id was already accepted")
        if outcome is Outcome.ACCEPTED:
            assert verdict.model is not None
            woken = self._refresh(verdict.model, moved_at=verdict.moved_at)
            if woken:
                log.info(
                    "webhook %s: model %r (@%s) changed; reading it again now",
                    delivery_id,
                    verdict.model,
                    verdict.alias,
                )
            else:
                outcome = Outcome.UNKNOWN_MODEL
                verdict = Verdict(outcome, f"no ModelDeployment follows model {verdict.model!r}")
        if outcome is not Outcome.ACCEPTED:
            level = logging.WARNING if STATUS[outcome] >= 400 else logging.INFO
            log.log(level, "webhook %s %s: %s", delivery_id or "(no id)", outcome.value, verdict.reason)
        metrics.WEBHOOK_DELIVERIES.labels(outcome.value).inc()
        return STATUS[outcome], outcome
