"""MLflow registry webhooks: a push that brings the next registry read forward.

MLflow (3.3+) posts `model_version_alias.created` (an alias set or moved) and
`model_version_alias.deleted`, signed with the webhook's secret. A delivery that is signed, fresh and
new wakes the poller for that model at once; nothing else changes: the read goes through the usual
comparison and the resources' passes stay level-based. Delivery is best effort on MLflow's side
(no outbox, a webhook list cached for 60 s), so polling stays the safety net.

Each registry that delivers is configured on its own (`WebhookRegistry`): a name, a secret of its
own and the tracking URIs its ModelDeployments name. It posts to `/webhooks/mlflow/<name>`, its
deliveries are checked with its secret only, and one reads the model on its tracking URIs only: a
tenant who holds one registry's secret can wake nothing of another's.

Refused (answered 4xx, logged, counted, nothing else): a delivery id that is not a UUID (before
anything is stored), a bad or missing signature, a timestamp outside the tolerance, a malformed
delivery. Ignored (answered 200 so MLflow does not retry): a replay of a delivery id already
accepted, an event of another kind, a model nobody follows on that registry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml

from aliasroll import metrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_ENTITY = "model_version_alias"
ALIAS_ACTIONS = frozenset({"created", "deleted"})
# A registry named `team-a` posts to PATH/team-a; the single-secret setting (ALIASROLL_WEBHOOK_SECRET)
# keeps PATH itself, so webhooks registered before registries had names keep working.
PATH = "/webhooks/mlflow"
SINGLE_REGISTRY_NAME = "default"
# A registry's name is a path segment and a label in logs: a DNS label.
REGISTRY_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# MLflow signs with `str(uuid.uuid4())` and `str(int(time.time()))`, and sends one `v1,<44 chars>`
# signature: anything else is refused before its signature is computed or its id stored.
DELIVERY_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TIMESTAMP = re.compile(r"[0-9]{1,12}")
MAX_SIGNATURE_CHARS = 400  # several signatures, as a sender rotating its secret might send
MAX_SIGNATURES = 8

# Secrets: at least 32 bytes, and not patterned (see `weak_secret`).
MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 96
# Ids of accepted deliveries kept per registry (under 100 bytes each in memory; 79 measured): past
# this many within the window, that registry's new deliveries get a 429 (MLflow retries) rather than
# ids being forgotten early.
SEEN_LIMIT = 10_000


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    MALFORMED = "malformed"
    UNKNOWN_MODEL = "unknown_model"
    IGNORED_EVENT = "ignored_event"
    # Refused by the listener before a body is read or checked (http.py).
    UNKNOWN_REGISTRY = "unknown_registry"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    TOO_LARGE = "too_large"
    SLOW = "slow"
    STANDBY = "standby"
    # Accepted, but the registry's replay memory is full, or the operator did not take the wake.
    MEMORY_FULL = "memory_full"
    UNAVAILABLE = "unavailable"


# Refusals are 4xx (MLflow retries only 429 and 5xx); whatever is ignored is a 200. What a later
# retry may get through (limits, a full memory, a standby, a busy operator) is a 429 or 503.
STATUS = {
    Outcome.ACCEPTED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.UNKNOWN_MODEL: 200,
    Outcome.IGNORED_EVENT: 200,
    Outcome.BAD_SIGNATURE: 401,
    Outcome.STALE: 401,
    Outcome.MALFORMED: 400,
    Outcome.UNKNOWN_REGISTRY: 404,
    Outcome.SLOW: 408,
    Outcome.TOO_LARGE: 413,
    Outcome.RATE_LIMITED: 429,
    Outcome.BUSY: 429,
    Outcome.MEMORY_FULL: 429,
    Outcome.STANDBY: 503,
    Outcome.UNAVAILABLE: 503,
}
# Outcomes anyone can cause without the secret: their log lines are rationed (`_LogBudget`).
UNAUTHENTICATED = frozenset(
    {
        Outcome.BAD_SIGNATURE,
        Outcome.MALFORMED,
        Outcome.UNKNOWN_REGISTRY,
        Outcome.RATE_LIMITED,
        Outcome.BUSY,
        Outcome.TOO_LARGE,
        Outcome.SLOW,
        Outcome.STANDBY,
    }
)


# ---- configuration ------------------------------------------------------------------------------


def tracking_uri_key(uri: str) -> str:
    """A tracking URI as a registry is recognised by: scheme and host lower-cased, a default port and
    trailing slashes dropped (`HTTP://MLflow:80/` names the registry `http://mlflow` does)."""
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port is None or port == default else f"{host}:{port}"
    key = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
    return f"{key}?{parts.query}" if parts.query else key


@dataclass(frozen=True)
class WebhookRegistry:
    """One MLflow server that delivers webhooks: where it posts, its secret, and the tracking URIs
    (as `tracking_uri_key` gives them) whose ModelDeployments its deliveries may wake."""

    name: str
    secret: str = field(repr=False)
    tracking_uris: frozenset[str]
    path: str

    @classmethod
    def named(
        cls, name: str, *, secret: str, tracking_uris: Sequence[str], path: str | None = None
    ) -> WebhookRegistry:
        return cls(
            name=name,
            secret=secret,
            tracking_uris=frozenset(tracking_uri_key(uri) for uri in tracking_uris),
            path=f"{PATH}/{name}" if path is None else path,
        )


def weak_secret(secret: str) -> str | None:
    """Why `secret` is too weak to sign deliveries, or None. MLflow's HMAC is only as strong as the
    secret: at least 32 bytes, and not a pattern (a string repeated, a few characters over and over)
    by a per-character entropy estimate. A random one passes: `openssl rand -base64 32`."""
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return f"it is {size} bytes; at least {MIN_SECRET_BYTES} are needed"
    if (secret + secret).find(secret, 1) < len(secret):
        return "it is a shorter string repeated"
    counts = Counter(secret)
    bits = -sum(n * math.log2(n / len(secret)) for n in counts.values())
    if bits < MIN_SECRET_BITS:
        return (
            f"it repeats too few characters ({len(counts)} distinct: about {bits:.0f} bits by their "
            f"frequencies, {MIN_SECRET_BITS} needed)"
        )
    return None


class WebhookConfigError(ValueError):
    """The webhook settings cannot be used; the message says which and what to change."""


def _uris(where: str, value: Any) -> list[str]:
    uris = [value] if isinstance(value, str) else value
    if (
        not isinstance(uris, list)
        or not uris
        or not all(isinstance(uri, str) and urlsplit(uri).scheme in ("http", "https") for uri in uris)
    ):
        raise WebhookConfigError(
            f"{where}: trackingUri must be the http(s) URI its ModelDeployments name in "
            "spec.registry.trackingUri, or a list of them"
        )
    return uris


def parse_registries(document: Any, *, source: str) -> tuple[WebhookRegistry, ...]:
    """Registries from the settings file: a mapping of name -> {trackingUri: URI or [URI, ...],
    secret: ...}. Refuses weak or shared secrets and a tracking URI claimed twice."""
    if not isinstance(document, dict) or not document:
        raise WebhookConfigError(
            f"{source}: expected a mapping of registry names to {{trackingUri: ..., secret: ...}}"
        )
    registries = []
    for name, settings in document.items():
        where = f"{source}: registry {name!r}"
        if not isinstance(name, str) or not REGISTRY_NAME.fullmatch(name):
            raise WebhookConfigError(f"{where}: a name is lower-case letters, digits and '-' (a DNS label)")
        if not isinstance(settings, dict) or set(settings) != {"trackingUri", "secret"}:
            raise WebhookConfigError(f"{where}: expected exactly the keys trackingUri and secret")
        secret = settings["secret"]
        if not isinstance(secret, str):
            raise WebhookConfigError(f"{where}: the secret must be a string (quote it)")
        if (why := weak_secret(secret)) is not None:
            raise WebhookConfigError(f"{where}: the secret is too weak: {why} (`openssl rand -base64 32`)")
        registries.append(
            WebhookRegistry.named(name, secret=secret, tracking_uris=_uris(where, settings["trackingUri"]))
        )
    _refuse_overlaps(registries, source=source)
    return tuple(registries)


def _refuse_overlaps(registries: Sequence[WebhookRegistry], *, source: str) -> None:
    secrets: dict[str, str] = {}
    owners: dict[str, str] = {}
    for registry in registries:
        if (other := secrets.setdefault(registry.secret, registry.name)) != registry.name:
            raise WebhookConfigError(
                f"{source}: registries {other!r} and {registry.name!r} share a secret: each needs its own"
            )
        for uri in sorted(registry.tracking_uris):
            if (other := owners.setdefault(uri, registry.name)) != registry.name:
                raise WebhookConfigError(
                    f"{source}: tracking URI {uri} is claimed by registries {other!r} and {registry.name!r}"
                )


def load_registries(
    *, registries_file: str | None, secret: str | None, tracking_uri: str | None
) -> tuple[WebhookRegistry, ...]:
    """The registries the settings name (docs/operations/webhooks.md); () when push is not configured.

    `registries_file` (ALIASROLL_WEBHOOK_REGISTRIES) is a YAML or JSON file, mounted from a Secret; a
    file that is not there (the Secret is optional) means no push. `secret` and `tracking_uri`
    (ALIASROLL_WEBHOOK_SECRET, ALIASROLL_WEBHOOK_TRACKING_URI) are the single-registry setting.
    """
    if secret is not None and registries_file is not None and Path(registries_file).is_file():
        raise WebhookConfigError(
            f"ALIASROLL_WEBHOOK_SECRET and the registries file {registries_file} are both set: keep one "
            "(name the single registry in the file, with its tracking URI)"
        )
    if secret is not None:
        if not tracking_uri:
            raise WebhookConfigError(
                "ALIASROLL_WEBHOOK_SECRET is set without ALIASROLL_WEBHOOK_TRACKING_URI: a delivery "
                "wakes only the ModelDeployments of the registry that signed it, so name that registry "
                "(the trackingUri its ModelDeployments use; several separated by commas), or move to "
                "ALIASROLL_WEBHOOK_REGISTRIES, one secret per registry (docs/operations/webhooks.md)"
            )
        if (why := weak_secret(secret)) is not None:
            raise WebhookConfigError(
                f"ALIASROLL_WEBHOOK_SECRET is too weak: {why} (`openssl rand -base64 32`)"
            )
        where = "ALIASROLL_WEBHOOK_TRACKING_URI"
        uris = _uris(where, [uri.strip() for uri in tracking_uri.split(",") if uri.strip()])
        return (WebhookRegistry.named(SINGLE_REGISTRY_NAME, secret=secret, tracking_uris=uris, path=PATH),)
    if registries_file is None:
        return ()
    path = Path(registries_file)
    if not path.is_file():
        log.warning(
            "ALIASROLL_WEBHOOK_REGISTRIES=%s: no such file (is the Secret there?): webhooks are not "
            "received; polling alone",
            registries_file,
        )
        return ()
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        # The parser's message may quote the file, secrets included: only its position is shown.
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise WebhookConfigError(f"{registries_file}: not readable as YAML or JSON{at}") from None
    return parse_registries(document, source=registries_file)


# ---- one delivery -------------------------------------------------------------------------------


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature MLflow sends: `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_matches(secret: str, delivery_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """True if any of the space-separated `v1,<base64>` signatures in `header` is right."""
    expected = base64.b64decode(sign(secret, delivery_id, timestamp, body).split(",", 1)[1])
    for candidate in header.split()[:MAX_SIGNATURES]:
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
    """What a delivery amounts to; `model` is set when it names a model, `reason` says why not.
    An accepted delivery carries its id as 16 bytes and the Unix time it was sent."""

    outcome: Outcome
    reason: str = ""
    model: str | None = None
    alias: str | None = None
    moved_at: float | None = None
    delivery: bytes | None = None
    sent: float | None = None


def check(headers: Mapping[str, str], body: bytes, *, secret: str, now: float, tolerance: float) -> Verdict:
    """Verifies the headers' form, the signature and the timestamp, and reads the event (replays are
    the receiver's job).

    The headers' form is checked first (it costs nothing and tells nothing), then the signature, so
    an unsigned sender learns nothing about the rest.
    """
    delivery_id = headers.get(DELIVERY_ID_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not DELIVERY_ID.fullmatch(delivery_id):
        return Verdict(
            Outcome.MALFORMED, f"{DELIVERY_ID_HEADER} is not a UUID ({len(delivery_id)} characters)"
        )
    if not TIMESTAMP.fullmatch(timestamp):
        return Verdict(Outcome.MALFORMED, f"{TIMESTAMP_HEADER} is not a Unix time")
    if not signature:
        return Verdict(
            Outcome.BAD_SIGNATURE, f"no {SIGNATURE_HEADER} header (create the webhook with the secret)"
        )
    if len(signature) > MAX_SIGNATURE_CHARS:
        return Verdict(Outcome.MALFORMED, f"{SIGNATURE_HEADER} is {len(signature)} characters long")
    if not signature_matches(secret, delivery_id, timestamp, body, signature):
        return Verdict(Outcome.BAD_SIGNATURE, "the signature does not match the webhook secret")
    sent = int(timestamp)
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
        delivery=uuid.UUID(delivery_id).bytes,
        sent=float(sent),
    )


def _event_time(value: object, *, default: float) -> float:
    # The payload's ISO time is finer than the header's whole seconds.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return default


class Remembered(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    FULL = "full"


class SeenDeliveries:
    """Ids of accepted deliveries, as 16-byte UUIDs, each kept until its own timestamp leaves the
    window (a replay after that is refused as stale anyway), at most `limit` of them: memory is
    bounded in bytes (under 100 an id), and a full memory refuses new ids rather than forgetting any."""

    def __init__(self, *, limit: int = SEEN_LIMIT) -> None:
        self._limit = limit
        self._until: dict[bytes, float] = {}  # id -> when its timestamp leaves the window

    def __len__(self) -> int:
        return len(self._until)

    def remember(self, delivery: bytes, *, until: float, now: float) -> Remembered:
        if len(delivery) != 16:
            raise ValueError("a delivery id is kept as its 16 bytes")
        self._forget_expired(now, everything=False)
        known = self._until.get(delivery)
        if known is not None and known > now:
            return Remembered.DUPLICATE
        if len(self._until) >= self._limit:
            self._forget_expired(now, everything=True)
            if len(self._until) >= self._limit:
                return Remembered.FULL
        self._until.pop(delivery, None)
        self._until[delivery] = until
        return Remembered.NEW

    def forget(self, delivery: bytes) -> None:
        self._until.pop(delivery, None)

    def _forget_expired(self, now: float, *, everything: bool) -> None:
        # Ids come in roughly in order of expiry: the oldest go first, cheaply; when full, all are looked at.
        if everything:
            for delivery in [d for d, until in self._until.items() if until <= now]:
                del self._until[delivery]
            return
        while self._until and next(iter(self._until.values())) <= now:
            del self._until[next(iter(self._until))]


class Refresh(Protocol):
    """Reads `model` again on the endpoints whose tracking URI is one of `tracking_uris`; returns how
    many (endpoint, model) subscriptions were woken (0: nobody follows it there)."""

    def __call__(
        self, model: str, *, tracking_uris: frozenset[str], moved_at: float | None
    ) -> Awaitable[int]: ...


class _LogBudget:
    """At most `lines` log lines per outcome per `period` for what anyone can cause without a secret;
    the rest are counted (the metric has them all) and summed up in the next line let through."""

    def __init__(
        self, *, lines: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lines, self._period, self._clock = lines, period, clock
        self._windows: dict[Outcome, tuple[float, int, int]] = {}  # outcome -> (start, logged, dropped)

    def allow(self, outcome: Outcome) -> tuple[bool, int]:
        """Whether to log this one, and how many were dropped before it."""
        now = self._clock()
        start, logged, dropped = self._windows.get(outcome, (now, 0, 0))
        if now - start >= self._period:
            start, logged = now, 0
        if logged < self._lines:
            self._windows[outcome] = (start, logged + 1, 0)
            return True, dropped
        self._windows[outcome] = (start, logged, dropped + 1)
        return False, 0


class WebhookReceiver:
    """Checks deliveries with the secret of the registry whose path they came to and wakes that
    registry's endpoints. Runs on the receiver's own event loop (http.py); `refresh` hands the wake
    to the operator's."""

    def __init__(
        self,
        *,
        registries: Sequence[WebhookRegistry],
        refresh: Refresh,
        tolerance: float = 300.0,
        clock: Callable[[], float] = time.time,
        seen_limit: int = SEEN_LIMIT,
    ) -> None:
        self._by_path = {registry.path: registry for registry in registries}
        self._refresh = refresh
        self._tolerance = tolerance
        self._clock = clock
        self._seen = {registry.name: SeenDeliveries(limit=seen_limit) for registry in registries}
        self._log_budget = _LogBudget()

    @property
    def registries(self) -> tuple[WebhookRegistry, ...]:
        return tuple(self._by_path.values())

    def registry(self, path: str) -> WebhookRegistry | None:
        return self._by_path.get(path)

    def remembered(self, registry: WebhookRegistry) -> int:
        return len(self._seen[registry.name])

    async def receive(
        self, registry: WebhookRegistry, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Outcome]:
        """Handles one delivery; returns the HTTP status to answer and the outcome (counted, logged)."""
        now = self._clock()
        verdict = check(headers, body, secret=registry.secret, now=now, tolerance=self._tolerance)
        # Logged only once it has the form of a UUID: nothing a sender chose reaches the log.
        delivery_id = headers.get(DELIVERY_ID_HEADER, "")
        delivery_id = delivery_id if DELIVERY_ID.fullmatch(delivery_id) else ""
        if verdict.outcome is Outcome.ACCEPTED:
            verdict = await self._wake(registry, verdict, delivery_id)
        self.count(verdict.outcome, verdict.reason, registry=registry.name, delivery_id=delivery_id)
        return STATUS[verdict.outcome], verdict.outcome

    async def _wake(self, registry: WebhookRegistry, verdict: Verdict, delivery_id: str) -> Verdict:
        assert verdict.model is not None
        assert verdict.delivery is not None
        assert verdict.sent is not None
        seen = self._seen[registry.name]
        remembered = seen.remember(verdict.delivery, until=verdict.sent + self._tolerance, now=self._clock())
        if remembered is Remembered.DUPLICATE:
            return Verdict(Outcome.DUPLICATE, "this delivery id was already accepted")
        if remembered is Remembered.FULL:
            return Verdict(
                Outcome.MEMORY_FULL,
                f"{len(seen)} deliveries accepted within the window, the most kept: retry later",
            )
        try:
            woken = await self._refresh(
                verdict.model, tracking_uris=registry.tracking_uris, moved_at=verdict.moved_at
            )
        except Exception as error:  # the operator did not take it: MLflow retries with the same id
            seen.forget(verdict.delivery)
            return Verdict(Outcome.UNAVAILABLE, f"the operator did not take the wake ({error!r})")
        if not woken:
            return Verdict(
                Outcome.UNKNOWN_MODEL,
                f"no ModelDeployment follows model {verdict.model!r} on registry {registry.name!r}",
            )
        log.info(
            "webhook %s (registry %s): model %r (@%s) changed; reading it again now",
            delivery_id,
            registry.name,
            verdict.model,
            verdict.alias,
        )
        return verdict

    def count(self, outcome: Outcome, reason: str, *, registry: str | None, delivery_id: str = "") -> None:
        """Counts an outcome, and logs it unless it is accepted (logged above) or one of too many that
        anyone can cause (see `_LogBudget`)."""
        metrics.WEBHOOK_DELIVERIES.labels(outcome.value).inc()
        if outcome is Outcome.ACCEPTED:
            return
        dropped = 0
        if outcome in UNAUTHENTICATED:
            allowed, dropped = self._log_budget.allow(outcome)
            if not allowed:
                return
        level = logging.WARNING if STATUS[outcome] >= 400 else logging.INFO
        if outcome is Outcome.STANDBY:
            level = logging.DEBUG  # MLflow retries; the Service may send the retry to the leader
        where = f" (registry {registry})" if registry else ""
        more = f" ({dropped} more not logged)" if dropped else ""
        log.log(level, "webhook %s%s %s: %s%s", delivery_id or "(no id)", where, outcome.value, reason, more)
