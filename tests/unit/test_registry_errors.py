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
            MlflowException("API request to http://mlflow:5000/x failed with exception ConnectionError"),
            RegistryUnavailable,
            "did not answer",
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
