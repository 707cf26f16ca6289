"""Which API server answers are the user's to fix (shown in status) and which only need a retry."""

from __future__ import annotations

import httpx2
import pytest
from lightkube.core.exceptions import ApiError

from aliasroll.errors import KubernetesApplyFailed, KubernetesUnavailable
from aliasroll.kube.failures import api_failure

URL = "https://127.0.0.1:6443/apis/apps/v1/namespaces/ml/deployments/sentiment-production"


def api_error(code: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    request = httpx2.Request("PATCH", URL)
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    response = httpx2.Response(code, json=status, headers=headers, request=request)
    return ApiError(request=request, response=response)


DUPLICATE_ENV = (
    "Internal error occurred: failed to create typed patch object (ml/sentiment-production; apps/v1, "
    'Kind=Deployment): .spec.template.spec.containers[name="model-server"].env: duplicate entries for '
    'key [name="LOG_LEVEL"]'
)


def bare_error(code: int) -> httpx2.HTTPStatusError:
    request = httpx2.Request("GET", URL)
    response = httpx2.Response(code, text="404 page not found", request=request)
    return httpx2.HTTPStatusError("not found", request=request, response=response)


@pytest.mark.parametrize(
    ("case", "error", "expected", "says"),
    [
        ("rbac", api_error(403, 'deployments.apps is forbidden: User "x"'), KubernetesApplyFailed, "(RBAC)"),
        (
            "namespace quota",
            api_error(403, 'services "m" is forbidden: exceeded quota: q, requested: services=1'),
            KubernetesApplyFailed,
            "the namespace's quota refused it: services",
        ),
        (
            "service IPs exhausted (a server error every time: retried, shown after a few)",
            api_error(500, "Internal error occurred: failed to allocate a serviceIP: range is full"),
            KubernetesUnavailable,
            "range is full",
        ),
        ("invalid", api_error(422, "spec.replicas: Invalid value"), KubernetesApplyFailed, "spec.replicas"),
        ("throttled", api_error(429, "storage is (re)initializing"), KubernetesUnavailable, "storage"),
        ("conflict", api_error(409, "the object has been modified"), KubernetesUnavailable, "HTTP 409"),
        ("server fault", api_error(500, "etcdserver: timeout"), KubernetesUnavailable, "etcdserver"),
        ("unavailable", api_error(503, "service unavailable"), KubernetesUnavailable, "HTTP 503"),
        ("kind not installed", bare_error(404), KubernetesApplyFailed, "HTTP 404"),
        (
            "duplicate env names (server-side apply)",
            api_error(500, DUPLICATE_ENV),
            KubernetesApplyFailed,
            'duplicate entries for key [name="LOG_LEVEL"]',
        ),
        (
            "live object SSA cannot read",
            api_error(500, "failed to create typed live object (ml/sentiment-production; ...): bad"),
            KubernetesApplyFailed,
            "failed to create typed live object",
        ),
        (
            "invalid pod template",
            api_error(422, 'Deployment.apps "x" is invalid: spec.template.spec.tolerations[0].operator'),
            KubernetesApplyFailed,
            "tolerations[0].operator",
        ),
        (
            "connection refused",
            httpx2.ConnectError("[Errno 111] Connection refused"),
            KubernetesUnavailable,
            "did not answer",
        ),
    ],
)
def test_api_answers_map_to_domain_errors(
    case: str, error: httpx2.HTTPError, expected: type[Exception], says: str
) -> None:
    mapped = api_failure("apply", "Deployment", "sentiment-production", error)
    assert type(mapped) is expected, case
    assert says in mapped.message
    assert "Deployment sentiment-production" in mapped.message


def test_missing_gateway_api_says_what_to_install() -> None:
    mapped = api_failure("apply", "HTTPRoute", "sentiment", bare_error(404))
    assert isinstance(mapped, KubernetesApplyFailed)
    assert "Gateway API CRDs are not installed" in mapped.message
    assert "spec.traffic.router: replicas" in mapped.message


def test_retry_after_from_the_server_is_kept() -> None:
    mapped = api_failure("list", "HTTPRoute", None, api_error(429, "slow down", {"Retry-After": "1"}))
    assert isinstance(mapped, KubernetesUnavailable)
    assert mapped.retry_after == 1.0
    assert "HTTPRoute objects" in mapped.message
    assert api_failure("list", "HTTPRoute", None, api_error(503, "x")).retry_after is None
