"""Maps what the API server (or the connection to it) answered into the operator's domain errors.

One place decides which answers are the user's to fix (RBAC, a missing CRD, an invalid object:
KubernetesApplyFailed, shown in status) and which only need a retry (throttling, a server fault,
a conflicting write, a dropped connection: KubernetesUnavailable, logged and retried).
"""

from __future__ import annotations

import httpx2
from lightkube.core.exceptions import ApiError

from aliasroll.errors import KubernetesApplyFailed, KubernetesUnavailable

# 409: another writer got in between (a resourceVersion race); the next pass reads afresh.
# 429: throttled, or "storage is (re)initializing" just after a CRD was installed.
RETRYABLE_CODES = frozenset({409, 429, 500, 502, 503, 504})

# Server-side apply answers these as HTTP 500 although they come from the object itself (duplicate
# keys in a list-map such as env, a value of the wrong type): the same object fails the same way on
# every retry, so they are shown to the user instead of retried forever.
# (k8s.io/apimachinery/pkg/util/managedfields/internal/structuredmerge.go)
DETERMINISTIC_APPLY_ERRORS = (
    "failed to create typed patch object",
    "failed to create typed live object",
    "to smd typed",
    "failed to convert new typed object",
)


def api_failure(
    action: str, kind: str, name: str | None, error: httpx2.HTTPError
) -> KubernetesApplyFailed | KubernetesUnavailable:
    """`action` is a verb phrase such as "apply" or "list"; `name` is None for a list."""
    target = f"{kind} {name}" if name else f"{kind} objects"
    if not isinstance(error, httpx2.HTTPStatusError):
        return KubernetesUnavailable(f"cannot {action} {target}: the API server did not answer ({error})")
    code = error.response.status_code
    # An ApiError carries the API server's Status message; a bare 404 (kind not installed) does not.
    status = error.status if isinstance(error, ApiError) else None
    message = (status.message if status is not None else None) or error.response.reason_phrase
    if code == 500 and any(marker in message for marker in DETERMINISTIC_APPLY_ERRORS):
        return KubernetesApplyFailed(f"cannot {action} {target}: the API server refused it: {message}")
    if code in RETRYABLE_CODES:
        return KubernetesUnavailable(
            f"cannot {action} {target} (HTTP {code}): {message}", retry_after=_retry_after(error)
        )
    if code == 404 and kind == "HTTPRoute":
        return KubernetesApplyFailed(
            f"cannot {action} {target}: the Gateway API CRDs are not installed "
            "(install them, or set spec.traffic.router: replicas)"
        )
    if code == 403 and "exceeded quota" in message:
        # A ResourceQuota of the namespace, not RBAC: the same 403, but the namespace's owner to fix.
        return KubernetesApplyFailed(f"cannot {action} {target}: the namespace's quota refused it: {message}")
    if code == 403:
        return KubernetesApplyFailed(f"the operator may not {action} {target} (RBAC): {message}")
    return KubernetesApplyFailed(f"cannot {action} {target} (HTTP {code}): {message}")


def status_code(error: httpx2.HTTPError) -> int | None:
    """The HTTP status of an answer, or None when the API server gave none (connection lost)."""
    return error.response.status_code if isinstance(error, httpx2.HTTPStatusError) else None


def _retry_after(error: httpx2.HTTPStatusError) -> float | None:
    header = error.response.headers.get("Retry-After")
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None  # an HTTP date: rare from the API server; the scheduler's backoff applies
