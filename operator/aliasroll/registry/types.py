"""Registry value types, free of the MLflow library so the planner and its tests stay light."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

READY = "READY"


@dataclass(frozen=True)
class Credentials:
    """What a registry client needs to authenticate; never printed (repr is masked)."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    insecure_tls: bool = False

    @property
    def fingerprint(self) -> str:
        """Identifies the credential set without revealing it (for cache keys and logs)."""
        material = f"{self.username}\0{self.password}\0{self.token}\0{self.insecure_tls}".encode()
        return hashlib.sha256(material).hexdigest()[:12]


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
