"""How MLflow's errors map to the operator's: the one place that decides, tested by status code."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException, RestException

from aliasroll.errors import ModelNotFound, RegistryAuthFailed, RegistryError, RegistryUnavailable
from aliasroll.registry.client import map_registry_error, normalize_aliases
from aliasroll.registry.types import Endpoint

ENDPOINT = Endpoint("http://mlflow:5000")


@pytest.mark.parametrize(
    ("error", "expected", "fragment"),
    [
        (
            RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}),
            ModelNotFound,
            "has no",
        ),
        (
            RestException({"error_code": "UNAUTHENTICATED", "message": "who?"}),
            RegistryAuthFailed,
            "credentials",
        ),
        (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), RegistryAuthFailed, "HTTP 403"),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}), RegistryUnavailable, "HTTP 500"),
        (
            RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
            RegistryUnavailable,
            "failed",
        ),
        (
            RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad name"}),
            RegistryError,
            "rejected",
        ),
        (
            # MLflow 3.5+'s DNS-rebinding guard: a 403 that is about the Host header, not credentials.
            MlflowException(
                "API request to endpoint /api/2.0/mlflow/registered-models/get failed with error code "
                "403 != 200. Response body: 'Invalid Host header - possible DNS rebinding attack detected'",
                error_code="PERMISSION_DENIED",
            ),
            RegistryError,
            "refused the Host header 'mlflow:5000': add it to the server's --allowed-hosts",
        ),
        (
            MlflowException("API request to http://mlflow:5000/x failed with exception ConnectionError"),
            RegistryUnavailable,
            "did not answer",
        ),
        (
            MlflowException(
                "API request to endpoint /api/2.0/mlflow/registered-models/get failed with error code "
                "502 != 200. Response body: '<html>Bad Gateway</html>'"
            ),
            RegistryUnavailable,
            "failed (HTTP 502)",
        ),
        (
            MlflowException(
                "API request to http://mlflow:5000/x failed with exception HTTPConnectionPool(host='mlflow', "
                'port=5000): Max retries exceeded (Caused by NameResolutionError("Failed to resolve"))'
            ),
            RegistryUnavailable,
            "the host name does not resolve",
        ),
        (
            MlflowException(
                "API request failed with exception ReadTimeoutError: Read timed out. (timeout=2)"
            ),
            RegistryUnavailable,
            "timed out (ALIASROLL_REGISTRY_TIMEOUT)",
        ),
        (
            MlflowException("API request failed with exception SSLError: CERTIFICATE_VERIFY_FAILED"),
            RegistryUnavailable,
            "MLFLOW_TRACKING_INSECURE_TLS",
        ),
    ],
)
def test_errors_map_to_domain_errors(
    error: MlflowException, expected: type[RegistryError], fragment: str
) -> None:
    mapped = map_registry_error(error, endpoint=ENDPOINT, subject="registered model 'm'")
    assert type(mapped) is expected
    assert fragment in str(mapped)
    assert "http://mlflow:5000" in str(mapped)


def test_transient_errors_are_retried_and_bad_requests_too_after_a_fix() -> None:
    assert RegistryUnavailable("x").transient
    assert RegistryAuthFailed("x").transient  # the Secret may be fixed without touching the resource
    assert not RegistryError("x").transient


def test_alias_versions_are_strings_whatever_the_store_returns() -> None:
    assert normalize_aliases({"production": 1, "canary": "2"}) == {"production": "1", "canary": "2"}
    assert normalize_aliases(None) == {}
