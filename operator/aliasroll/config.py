"""Operator-wide settings, from the environment (the operator's Deployment sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from aliasroll import __version__
from aliasroll.allowlists import (
    GATEWAYS,
    HOSTNAMES,
    PRIORITY_CLASSES,
    RUNTIME_CLASSES,
    AllowLists,
    parse_list,
)
from aliasroll.egress import DEFAULT_ALLOWED, Destinations
from aliasroll.planning.workloads import DependencySettings
from aliasroll.registry.types import DEFAULT_MAX_ANSWER_BYTES


@dataclass(frozen=True)
class OperatorConfig:
    serving_image: str = f"ghcr.io/aliasroll/serving:{__version__}"
    registry_timeout_seconds: float = 5.0
    registry_max_backoff_seconds: float = 60.0
    # Past this many models due at once for one registry, one search sweep replaces per-model calls.
    registry_sweep_threshold: int = 25
    # Calls in flight to one registry at a time: a registry that hangs holds only its own threads.
    registry_concurrency: int = 4
    # The most one registry answer may hold (read as it streams in; a larger one fails the call).
    registry_max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    # Where the operator may call a resource's URLs (trackingUri, the analysis' Prometheus), from
    # ALIASROLL_ALLOWED_DESTINATIONS and ALIASROLL_REFUSED_DESTINATIONS (aliasroll.egress).
    destinations: Destinations = field(default_factory=lambda: Destinations.parse(DEFAULT_ALLOWED))
    progress_deadline_seconds: int = 600
    # What the serving pods install and where they keep it (ALIASROLL_DEPENDENCY_*: the cache's
    # location and size, direct references, source builds); the defaults are the safe choice.
    dependencies: DependencySettings = field(default_factory=DependencySettings)
    # Retry delay after a failed pass (Kubernetes API errors, missing Secret), doubled up to the cap.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    # How often the watched ModelDeployments are listed, to catch deletions and additions the watch
    # missed (during a re-list after a lost connection, for instance).
    resync_seconds: float = 300.0
    # Passes under way at once, across all resources: the API server's and the operator's CPU, not
    # the number of resources, set how fast a fleet converges.
    max_concurrent_passes: int = 16
    # Owned objects change in bursts (a Deployment's status, three or four times as its pods
    # start): their owner's pass waits this long after the first change and reads the whole burst.
    child_settle_seconds: float = 1.0
    # Version tags (the registry's records) wait while rollouts come in a burst, at most this long:
    # a burst of new resources gets Ready first (controller.tag_writer). 0: written as soon as planned.
    records_max_delay_seconds: float = 120.0
    # Push (docs/operations/webhooks.md): the registries that deliver webhooks, each with its own
    # secret, in a file mounted from a Secret (webhooks.load_registries); or one registry's secret
    # and tracking URI.
    # No registry or no address: no receiver, polling alone. A delivery's timestamp may be this far
    # off. HTTPS when a certificate and key are given. Requests a second, per source and overall.
    webhook_registries_file: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_tracking_uri: str | None = None
    webhook_listen: str | None = None
    webhook_tolerance_seconds: float = 300.0
    webhook_tls_cert: str | None = None
    webhook_tls_key: str | None = None
    webhook_rate_per_source: float = 20.0
    webhook_rate_total: float = 100.0
    # host:port for GET /metrics (Prometheus); None: not served.
    metrics_listen: str | None = None
    # Leader election (docs/operations/high-availability.md): off for a lone process (`make run`, the tests),
    # on in the Deployment, whose two replicas share the Lease `lease_namespace/lease_name`.
    leader_election: bool = False
    lease_name: str = "aliasroll"
    lease_namespace: str | None = None  # None: the pod's own namespace
    # Failover after a kill -9: at most lease + retry (12 s), the old leader fenced 3 s before.
    lease_duration_seconds: float = 10.0
    lease_renew_deadline_seconds: float = 7.0
    lease_retry_period_seconds: float = 2.0
    pod_name: str | None = None  # the candidate's name in the Lease (plus a random suffix)
    # What a ModelDeployment may ask for beyond its namespace (aliasroll.allowlists): RuntimeClasses,
    # PriorityClasses, parentRefs in other namespaces, hostnames. The defaults are the safe choice.
    allowed: AllowLists = field(default_factory=AllowLists)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Every setting from the environment, one group at a time; unset or empty keeps the default,
        and a bad value stops the operator with a message naming it."""
        config, read = cls(), _Settings(os.environ if env is None else env)
        for step in (_registry, _workloads, _calls, _passes, _listeners, _leadership):
            config = step(config, read)
        return replace(config, allowed=allow_lists(read.env))


@dataclass(frozen=True)
class _Settings:
    """The environment, read one setting at a time."""

    env: Mapping[str, str]

    def text(self, name: str) -> str | None:
        return self.env.get(name) or None

    def number(self, name: str, default: float, *, zero: bool = False) -> float:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SystemExit(f"{name}={raw!r} is not a number") from None
        if value < 0 or (value == 0 and not zero):
            raise SystemExit(f"{name}={raw!r} must be " + ("zero or more" if zero else "above zero"))
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = (self.env.get(name) or "").strip().lower()
        if not raw:
            return default
        if raw in ("true", "1", "yes", "on"):
            return True
        if raw in ("false", "0", "no", "off"):
            return False
        raise SystemExit(f"{name}={self.env.get(name)!r} is not true or false")


def _registry(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """How long the operator waits on a registry, how it backs off, and when one sweep reads them all."""
    return replace(
        config,
        registry_timeout_seconds=read.number("ALIASROLL_REGISTRY_TIMEOUT", config.registry_timeout_seconds),
        registry_max_backoff_seconds=read.number(
            "ALIASROLL_REGISTRY_MAX_BACKOFF", config.registry_max_backoff_seconds
        ),
        registry_sweep_threshold=int(
            read.number("ALIASROLL_REGISTRY_SWEEP_THRESHOLD", config.registry_sweep_threshold)
        ),
    )


def _workloads(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """What the serving pods get: their image, their rollout's deadline, their dependencies."""
    return replace(
        config,
        serving_image=read.text("ALIASROLL_SERVING_IMAGE") or config.serving_image,
        progress_deadline_seconds=int(
            read.number("ALIASROLL_PROGRESS_DEADLINE", config.progress_deadline_seconds)
        ),
        dependencies=DependencySettings.from_env(read.env),
    )


def _calls(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """What a tenant's endpoint may cost: calls at once per registry, an answer's size, destinations."""
    return replace(
        config,
        registry_concurrency=max(
            1, int(read.number("ALIASROLL_REGISTRY_CONCURRENCY", config.registry_concurrency))
        ),
        registry_max_answer_bytes=max(
            1024, int(read.number("ALIASROLL_REGISTRY_MAX_ANSWER_BYTES", config.registry_max_answer_bytes))
        ),
        destinations=destinations(read.env),
    )


def _passes(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """When passes run: retries, resyncs, how many at once, how long owned objects settle, records."""
    return replace(
        config,
        retry_max_seconds=read.number("ALIASROLL_RETRY_MAX", config.retry_max_seconds),
        resync_seconds=read.number("ALIASROLL_RESYNC_SECONDS", config.resync_seconds),
        max_concurrent_passes=max(
            1, int(read.number("ALIASROLL_MAX_CONCURRENT_PASSES", config.max_concurrent_passes))
        ),
        child_settle_seconds=read.number(
            "ALIASROLL_CHILD_SETTLE_SECONDS", config.child_settle_seconds, zero=True
        ),
        records_max_delay_seconds=read.number(
            "ALIASROLL_RECORDS_MAX_DELAY_SECONDS", config.records_max_delay_seconds, zero=True
        ),
    )


def _listeners(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """The operator's own listeners (http.py): the webhook receiver and GET /metrics."""
    return replace(
        config,
        webhook_registries_file=read.text("ALIASROLL_WEBHOOK_REGISTRIES"),
        webhook_secret=read.text("ALIASROLL_WEBHOOK_SECRET"),
        webhook_tracking_uri=read.text("ALIASROLL_WEBHOOK_TRACKING_URI"),
        webhook_listen=read.text("ALIASROLL_WEBHOOK_LISTEN"),
        webhook_tolerance_seconds=read.number(
            "ALIASROLL_WEBHOOK_TOLERANCE", config.webhook_tolerance_seconds
        ),
        webhook_tls_cert=read.text("ALIASROLL_WEBHOOK_TLS_CERT"),
        webhook_tls_key=read.text("ALIASROLL_WEBHOOK_TLS_KEY"),
        webhook_rate_per_source=read.number(
            "ALIASROLL_WEBHOOK_RATE_PER_SOURCE", config.webhook_rate_per_source
        ),
        webhook_rate_total=read.number("ALIASROLL_WEBHOOK_RATE_TOTAL", config.webhook_rate_total),
        metrics_listen=read.text("ALIASROLL_METRICS_LISTEN"),
    )


def _leadership(config: OperatorConfig, read: _Settings) -> OperatorConfig:
    """Leader election on a Lease (docs/operations/high-availability.md)."""
    return replace(
        config,
        leader_election=read.flag("ALIASROLL_LEADER_ELECTION", config.leader_election),
        lease_name=read.text("ALIASROLL_LEASE_NAME") or config.lease_name,
        lease_namespace=read.text("ALIASROLL_LEASE_NAMESPACE") or read.text("POD_NAMESPACE"),
        lease_duration_seconds=read.number("ALIASROLL_LEASE_DURATION", config.lease_duration_seconds),
        lease_renew_deadline_seconds=read.number(
            "ALIASROLL_LEASE_RENEW_DEADLINE", config.lease_renew_deadline_seconds
        ),
        lease_retry_period_seconds=read.number(
            "ALIASROLL_LEASE_RETRY_PERIOD", config.lease_retry_period_seconds
        ),
        pod_name=read.text("POD_NAME"),
    )


def allow_lists(env: Mapping[str, str]) -> AllowLists:
    """ALIASROLL_ALLOWED_*: patterns separated by commas or spaces; unset or empty keeps the default."""

    def entries(name: str) -> tuple[str, ...] | None:
        try:
            return parse_list(name, env.get(name))
        except ValueError as error:
            raise SystemExit(str(error)) from None

    return AllowLists(
        runtime_classes=entries(RUNTIME_CLASSES) or (),
        priority_classes=entries(PRIORITY_CLASSES) or (),
        gateways=entries(GATEWAYS) or (),
        hostnames=entries(HOSTNAMES),
    )


def destinations(env: Mapping[str, str]) -> Destinations:
    """ALIASROLL_ALLOWED_DESTINATIONS and ALIASROLL_REFUSED_DESTINATIONS (aliasroll.egress)."""
    try:
        return Destinations.from_env(env)
    except ValueError as error:
        raise SystemExit(str(error)) from None
