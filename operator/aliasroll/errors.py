"""Domain errors, mapped once at the edges (registry client, Kubernetes client, spec parser).

Each carries the condition reason it surfaces as and a message that says what to fix. Messages
end up in status and events, so they never include credentials or request payloads.
"""

from __future__ import annotations

from aliasroll import reasons


class AliasrollError(Exception):
    """Base class: `reason` is a CamelCase condition reason, `str(error)` the user-facing message."""

    reason: str = "Error"
    transient: bool = False

    @property
    def message(self) -> str:
        return str(self)


class InvalidSpec(AliasrollError):
    """A field the schema accepted but the operator cannot use (or a resource older than the CRD)."""

    reason = reasons.INVALID_SPEC

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        self.field_path = field_path


class NotAllowed(InvalidSpec):
    """A value the schema accepts but the operator's allow-lists refuse (aliasroll.allowlists): the
    message names the setting. Handled as an InvalidSpec: nothing is applied, what serves keeps serving."""

    reason = reasons.NOT_ALLOWED


class CredentialsNotFound(AliasrollError):
    """The registry credentials Secret, or a key it should hold, is missing."""

    reason = reasons.CREDENTIALS_NOT_FOUND
    transient = True  # the Secret may be created later; keep retrying with backoff


class RegistryError(AliasrollError):
    """The registry could not answer the question: nothing may roll on this basis."""

    reason = reasons.REGISTRY_REJECTED


class RegistryUnavailable(RegistryError):
    """Connection refused, timeout, or a 5xx/429 answer: worth retrying."""

    reason = reasons.REGISTRY_UNREACHABLE
    transient = True


class RegistryAuthFailed(RegistryError):
    """401 or 403: the credentials are wrong or lack permission on the model."""

    reason = reasons.REGISTRY_AUTH_FAILED
    transient = True  # credentials may be fixed in the Secret without touching the resource


class RegistryAnswerTooLarge(RegistryError):
    """The registry answered more than ALIASROLL_REGISTRY_MAX_ANSWER_BYTES; reading stopped there."""


class DestinationRefused(RegistryError):
    """The trackingUri is not a destination the operator may call (ALIASROLL_ALLOWED_DESTINATIONS):
    nothing was sent, and nothing is retried until the spec or the operator's settings change."""

    reason = reasons.DESTINATION_REFUSED


class ModelNotFound(RegistryError):
    reason = reasons.MODEL_NOT_FOUND
    transient = True  # the model may be registered later


class KubernetesApplyFailed(AliasrollError):
    """The API server refused an object the planner produced (for example a missing CRD or RBAC rule)."""

    reason = reasons.APPLY_FAILED
    transient = True


class NameConflict(AliasrollError):
    """A name the operator would create is taken by an object this resource does not control."""

    reason = reasons.NAME_CONFLICT
    transient = True  # the other object may be renamed or deleted; keep looking, with backoff


class KubernetesUnavailable(AliasrollError):
    """The API server could not answer now (429, 5xx, conflict, connection lost): retry, change nothing.

    Not a user's mistake, so it never flips Ready: the pass is retried after `retry_after` seconds
    (the server's Retry-After when it gave one) and what runs keeps running.
    """

    reason = reasons.KUBERNETES_UNAVAILABLE
    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AnalysisUnavailable(AliasrollError):
    """The canary's metrics could not be read: no pod answered /metrics, or Prometheus did not answer
    or refused the query. Never counted as a failed measurement; the message says what to fix."""

    reason = reasons.ANALYSIS_UNAVAILABLE
    transient = True
