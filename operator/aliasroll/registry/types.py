"""Registry value types, free of the MLflow library so the planner and its tests stay light."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

READY = "READY"
# The most a registry answer may hold (ALIASROLL_REGISTRY_MAX_ANSWER_BYTES). A search page of 1,000
# models, each with a description, three tags, its latest version and two aliases, is 1.3 MB
# (measured on MLflow 3.17); a registry whose page does not fit is read model by model instead.
DEFAULT_MAX_ANSWER_BYTES = 4 * 1024 * 1024
_FINGERPRINT_KEY = secrets.token_bytes(32)  # per process: see Credentials.fingerprint


@dataclass(frozen=True)
class Credentials:
    """What a registry client needs to authenticate; never printed (repr is masked)."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    insecure_tls: bool = False

    @property
    def fingerprint(self) -> str:
        """Tells credential sets apart in this process's logs without revealing them: keyed with a
        key drawn at start and never shown, so a log cannot be used to test guessed passwords
        offline (an unkeyed hash of a known username and a password can). It changes at restart."""
        material = f"{self.username}\0{self.password}\0{self.token}\0{self.insecure_tls}".encode()
        return hmac.new(_FINGERPRINT_KEY, material, hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class Endpoint:
    """One registry as seen with one set of credentials."""

    tracking_uri: str
    credentials: Credentials | None = None

    def __str__(self) -> str:
        suffix = f" (credentials {self.credentials.fingerprint})" if self.credentials else ""
        return f"{self.tracking_uri}{suffix}"


@dataclass(frozen=True)
class VersionInfo:
    """What the operator needs of a model version; a version number never changes what it names."""

    model: str
    version: str
    status: str
    run_id: str | None
    source: str | None
    # The version's tags when it was read, as (key, value) pairs: what the operator's records
    # (aliasroll.io/...) already say, so a restarted operator does not write them again.
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def ready(self) -> bool:
        return self.status == READY
