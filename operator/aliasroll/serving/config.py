"""The server's settings, from the environment the operator gives its pods (see README)."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The pod's terminationGracePeriodSeconds (40) minus its preStop sleep (5) is what the process has
# after SIGTERM; the drain, plus up to 2 s for a hung predict call to be abandoned, must fit in it.
MAX_DRAIN_SECONDS = 30
# The port of /ready, /live, /metrics and /version: the cluster's (the kubelet, Prometheus, the
# operator's canary analysis), never a Service's. The operator sets ADMIN_PORT (spec.serving.adminPort).
DEFAULT_ADMIN_PORT = 9090
# Scoring requests in flight at once (read, queued for a predict call, or predicted); past it a
# request is answered 503 with Retry-After at once, so the queue, and the memory of the bodies
# held in it (up to ALIASROLL_MAX_REQUEST_BYTES each), stays bounded.
DEFAULT_MAX_IN_FLIGHT = 64
# A keep-alive connection older than this gets `Connection: close` on its next answer (on the serving
# port), so its client reconnects and lands where the Service routes now: kube-proxy steers only new
# connections, and a version taken out of the endpoints (kept warm for a rollback) would otherwise
# keep answering the clients that hold connections to it. 0: connections are never closed for age.
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 1.0
MAX_CONNECTION_AGE_LIMIT = 86400

# Shadow traffic (mirror.py): a copy of a share of the answered /invocations requests goes to the
# shadow track's Service, after the client has its answer. The bounds below keep what a slow,
# hanging or hostile shadow can cost production: queued copies, calls at once, time and bytes a call.
DEFAULT_SHADOW_QUEUE = 64
DEFAULT_SHADOW_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_SHADOW_CONCURRENCY = 4
DEFAULT_SHADOW_TIMEOUT_SECONDS = 5.0
MAX_SHADOW_TIMEOUT_SECONDS = 300
DEFAULT_SHADOW_MAX_ANSWER_BYTES = 4 * 1024 * 1024
DEFAULT_SHADOW_TOLERANCE = 1e-6
# The score buckets of aliasroll_serving_prediction_value: probabilities in tenths, and a few decades
# either side for scores that are not. ALIASROLL_PREDICTION_BUCKETS replaces them.
DEFAULT_PREDICTION_BUCKETS = (
    -1000.0, -100.0, -10.0, -1.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    10.0, 100.0, 1000.0,
)  # fmt: skip
MAX_PREDICTION_BUCKETS = 50

_PINNED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ConfigError(Exception):
    """A setting the server cannot start with; the message names the variable."""


@dataclass(frozen=True)
class ShadowConfig:
    """Where and how production mirrors its requests (ALIASROLL_SHADOW_*); see mirror.py."""

    host: str
    port: int
    path: str  # the shadow's /invocations, under the URL's path
    percent: float = 100.0
    queue: int = DEFAULT_SHADOW_QUEUE
    queue_bytes: int = DEFAULT_SHADOW_QUEUE_BYTES
    concurrency: int = DEFAULT_SHADOW_CONCURRENCY
    timeout_seconds: float = DEFAULT_SHADOW_TIMEOUT_SECONDS
    max_answer_bytes: int = DEFAULT_SHADOW_MAX_ANSWER_BYTES
    tolerance: float = DEFAULT_SHADOW_TOLERANCE

    @property
    def authority(self) -> str:
        """The Host header: host[:port], an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


@dataclass(frozen=True)
class ServingConfig:
    model_uri: str
    model_name: str
    model_version: str
    host: str = "0.0.0.0"
    port: int = 8080
    admin_port: int = DEFAULT_ADMIN_PORT
    scratch_dir: Path = Path("/scratch")
    max_request_bytes: int = 16 * 1024 * 1024
    request_timeout_seconds: float = 60.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    batching: bool = True
    max_batch_rows: int = 1024
    predict_threads: int = 2
    track: str = ""
    log_level: str = "info"
    drain_seconds: int = 20
    drain_accept_seconds: int = 3
    # install: what the version logged beyond the image is installed at start; image: nothing is.
    dependencies: str = "install"
    # Where installed requirements are kept: the operator's cache volume (this namespace's part of
    # it), or scratch.
    dependency_cache: Path = Path("/scratch/dependencies")
    # The operator's bound on that cache: sets no pod used for an hour are pruned above it. None: none.
    dependency_cache_max_bytes: int | None = None
    # What the operator allows beyond requirements from the index (serving/requirements.Policy).
    direct_references: bool = False
    source_builds: bool = False
    # Mirroring to a shadow track; None: off.
    shadow: ShadowConfig | None = None
    # What marks a mirrored request (X-Aliasroll-Mirror), sent and accepted; "" : the value "1".
    mirror_token: str = ""
    prediction_buckets: tuple[float, ...] = DEFAULT_PREDICTION_BUCKETS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingConfig:
        env = os.environ if env is None else env
        uri = _model_uri(env)
        drain, accept = _drain(env)
        dependencies = _dependencies(env)
        scratch = Path(env.get("SCRATCH_DIR") or "/scratch")
        port, admin_port = _ports(env)
        pinned = _PINNED.match(uri)
        name, version = (pinned["name"], pinned["version"]) if pinned else (uri, "unknown")
        return cls(
            model_uri=uri,
            model_name=name,
            model_version=version,
            host=env.get("HOST", "0.0.0.0"),
            port=port,
            admin_port=admin_port,
            scratch_dir=scratch,
            max_request_bytes=_int(env, "ALIASROLL_MAX_REQUEST_BYTES", 16 * 1024 * 1024, low=1, high=2**31),
            request_timeout_seconds=float(
                _int(env, "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", 60, low=1, high=86400)
            ),
            max_in_flight=_int(env, "ALIASROLL_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, low=1, high=100_000),
            max_connection_age_seconds=_seconds(
                env,
                "ALIASROLL_MAX_CONNECTION_AGE_SECONDS",
                DEFAULT_MAX_CONNECTION_AGE_SECONDS,
                high=MAX_CONNECTION_AGE_LIMIT,
                hint=" (0: connections are never closed for their age)",
            ),
            batching=_flag(env, "ALIASROLL_BATCHING", default=True),
            max_batch_rows=_int(env, "ALIASROLL_MAX_BATCH_ROWS", 1024, low=1, high=1_000_000),
            predict_threads=_int(env, "ALIASROLL_PREDICT_THREADS", 2, low=1, high=64),
            track=env.get("ALIASROLL_TRACK", ""),
            log_level=env.get("ALIASROLL_LOG_LEVEL", "info").lower(),
            drain_seconds=drain,
            drain_accept_seconds=accept,
            dependencies=dependencies,
            dependency_cache=Path(env.get("ALIASROLL_DEPENDENCY_CACHE") or scratch / "dependencies"),
            dependency_cache_max_bytes=(
                _int(env, "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES", 0, low=1, high=2**62)
                if env.get("ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES", "").strip()
                else None
            ),
            direct_references=_flag(env, "ALIASROLL_DIRECT_REFERENCES", default=False),
            source_builds=_flag(env, "ALIASROLL_SOURCE_BUILDS", default=False),
            shadow=_shadow(env),
            mirror_token=_mirror_token(env),
            prediction_buckets=_buckets(env),
        )


def _model_uri(env: Mapping[str, str]) -> str:
    """MODEL_URI: the pinned version the pod serves, never an alias."""
    uri = env.get("MODEL_URI", "").strip()
    if not uri:
        raise ConfigError("MODEL_URI is not set: give the pinned version, e.g. models:/sentiment/3")
    if "@" in uri:
        raise ConfigError(
            f"MODEL_URI={uri!r} names an alias: a restarted pod could load another version. "
            "Give models:/<name>/<version>."
        )
    return uri


def _drain(env: Mapping[str, str]) -> tuple[int, int]:
    """DRAIN_SECONDS and DRAIN_ACCEPT_SECONDS: how long a SIGTERM'd server drains, and how much of that
    it still accepts new requests."""
    drain = _int(
        env,
        "DRAIN_SECONDS",
        20,
        low=1,
        high=MAX_DRAIN_SECONDS,
        hint=" (the pod's terminationGracePeriodSeconds minus its preStop sleep must exceed it by 2 s)",
    )
    accept = _int(env, "DRAIN_ACCEPT_SECONDS", min(3, drain - 1), low=0, high=MAX_DRAIN_SECONDS)
    if accept >= drain:
        raise ConfigError(
            f"DRAIN_ACCEPT_SECONDS={accept} must be less than DRAIN_SECONDS={drain}: "
            "the drain must leave time to finish the requests in flight"
        )
    return drain, accept


def _dependencies(env: Mapping[str, str]) -> str:
    dependencies = env.get("ALIASROLL_DEPENDENCIES", "install").strip().lower() or "install"
    if dependencies not in ("install", "image"):
        raise ConfigError(
            f"ALIASROLL_DEPENDENCIES={dependencies!r}: use install (the version's requirements are "
            "installed at start) or image (the image has them)"
        )
    return dependencies


def _shadow(env: Mapping[str, str]) -> ShadowConfig | None:
    """ALIASROLL_SHADOW_URL and its bounds; None when the URL is unset or the share is 0."""
    url = env.get("ALIASROLL_SHADOW_URL", "").strip()
    percent = _number(env, "ALIASROLL_SHADOW_PERCENT", 100.0, low=0, high=100)
    if not url or percent == 0:
        return None
    host, port, path = _shadow_url(url)
    return ShadowConfig(
        host=host,
        port=port,
        path=path,
        percent=percent,
        queue=_int(env, "ALIASROLL_SHADOW_QUEUE", DEFAULT_SHADOW_QUEUE, low=1, high=100_000),
        queue_bytes=_int(env, "ALIASROLL_SHADOW_QUEUE_BYTES", DEFAULT_SHADOW_QUEUE_BYTES, low=1, high=2**40),
        concurrency=_int(env, "ALIASROLL_SHADOW_CONCURRENCY", DEFAULT_SHADOW_CONCURRENCY, low=1, high=256),
        timeout_seconds=_number(
            env,
            "ALIASROLL_SHADOW_TIMEOUT_SECONDS",
            DEFAULT_SHADOW_TIMEOUT_SECONDS,
            low=0.001,
            high=MAX_SHADOW_TIMEOUT_SECONDS,
        ),
        max_answer_bytes=_int(
            env, "ALIASROLL_SHADOW_MAX_ANSWER_BYTES", DEFAULT_SHADOW_MAX_ANSWER_BYTES, low=1, high=2**31
        ),
        tolerance=_number(env, "ALIASROLL_SHADOW_TOLERANCE", DEFAULT_SHADOW_TOLERANCE, low=0, high=math.inf),
    )


def _shadow_url(url: str) -> tuple[str, int, str]:
    """http://host[:port][/prefix]: the shadow track's Service, in the cluster (plain HTTP, as the
    Services of the serving pods are)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"ALIASROLL_SHADOW_URL={url!r} is not a URL") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"ALIASROLL_SHADOW_URL={url!r}: give http://<host>[:<port>], the shadow track's Service"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"ALIASROLL_SHADOW_URL={url!r}: no credentials, query or fragment")
    return parts.hostname, port, parts.path.rstrip("/") + "/invocations"


def _mirror_token(env: Mapping[str, str]) -> str:
    token = env.get("ALIASROLL_MIRROR_TOKEN", "").strip()
    if token and not re.fullmatch(r"[A-Za-z0-9._~+/=-]{8,256}", token):
        raise ConfigError(
            "ALIASROLL_MIRROR_TOKEN must be 8 to 256 characters of letters, digits and ._~+/=- "
            "(it is sent as a header value)"
        )
    return token


def _buckets(env: Mapping[str, str]) -> tuple[float, ...]:
    """ALIASROLL_PREDICTION_BUCKETS: increasing upper bounds, comma-separated."""
    raw = env.get("ALIASROLL_PREDICTION_BUCKETS", "").strip()
    if not raw:
        return DEFAULT_PREDICTION_BUCKETS
    try:
        bounds = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"ALIASROLL_PREDICTION_BUCKETS={raw!r}: give numbers separated by commas") from None
    increasing = all(a < b for a, b in itertools.pairwise(bounds))
    if not increasing or not all(math.isfinite(b) for b in bounds) or len(bounds) > MAX_PREDICTION_BUCKETS:
        raise ConfigError(
            f"ALIASROLL_PREDICTION_BUCKETS={raw!r}: at most {MAX_PREDICTION_BUCKETS} finite numbers, "
            "each larger than the one before"
        )
    return bounds


def _ports(env: Mapping[str, str]) -> tuple[int, int]:
    """PORT and ADMIN_PORT, never the same."""
    port = _int(env, "PORT", 8080, low=1, high=65535)
    admin_port = _int(env, "ADMIN_PORT", DEFAULT_ADMIN_PORT, low=1, high=65535)
    if admin_port == port:
        raise ConfigError(
            f"ADMIN_PORT={admin_port} must differ from PORT={port}: /metrics, /version, /ready and "
            "/live are served on a port of their own, which Services do not send clients to"
        )
    return port, admin_port


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int, hint: str = "") -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low} and {high}{hint}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, *, high: int, hint: str = "") -> float:
    """A duration in seconds, fractions allowed, from 0 to `high`."""
    return _number(env, name, default, low=0, high=high, unit="seconds", hint=hint)


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float,
    high: float,
    unit: str = "",
    hint: str = "",
) -> float:
    """A number from `low` to `high` (fractions allowed), said in `unit` in the messages."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number{f' of {unit}' if unit else ''}") from None
    if not low <= value <= high:  # also refuses nan
        raise ConfigError(
            f"{name}={raw!r} must be between {low:g} and {high:g}{f' {unit}' if unit else ''}{hint}"
        )
    return value


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name}={raw!r}: use on or off")
