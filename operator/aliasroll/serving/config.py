"""The server's settings, from the environment the operator gives its pods (see README)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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

_PINNED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class ConfigError(Exception):
    """A setting the server cannot start with; the message names the variable."""


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
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= high:  # also refuses nan
        raise ConfigError(f"{name}={raw!r} must be between 0 and {high} seconds{hint}")
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
