"""Credentials against a real MLflow server with basic auth: accepted, refused, and never leaked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aliasroll.errors import RegistryAuthFailed
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.types import Credentials, Endpoint
from mlflowserver import MlflowServer
from support.registry import quick_versions

ADMIN_PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    data = tmp_path_factory.mktemp("mlflow-auth")
    config = data / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{data / 'auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        data,
        extra_args=["--app-name", "basic-auth"],
        extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key",
        },
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def registered(auth_server: MlflowServer) -> str:
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        client = MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url)
        quick_versions(client, "guarded", 1)
        client.set_registered_model_alias("guarded", "production", "1")
    return "guarded"


def test_the_right_credentials_resolve_aliases(auth_server: MlflowServer, registered: str) -> None:
    endpoint = Endpoint(auth_server.url, Credentials(username="admin", password=ADMIN_PASSWORD))
    assert RegistryClient().model_aliases(endpoint, registered) == {"production": "1"}


@pytest.mark.parametrize(
    "credentials",
    [None, Credentials(username="admin", password="wrong-password")],
    ids=["no credentials", "wrong password"],
)
def test_missing_or_wrong_credentials_are_an_auth_error(
    auth_server: MlflowServer,
    registered: str,
    credentials: Credentials | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(RegistryAuthFailed) as caught:
        RegistryClient().model_aliases(Endpoint(auth_server.url, credentials), registered)
    message = str(caught.value)
    assert "refused the credentials" in message
    assert "credentialsSecretRef" in message
    assert "wrong-password" not in message
    assert "wrong-password" not in caplog.text


def test_credentials_never_print(tmp_path: Path) -> None:
    credentials = Credentials(username="admin", password="s3cret", token="t0ken")
    endpoint = Endpoint("http://mlflow:5000", credentials)
    for text in (repr(credentials), repr(endpoint), str(endpoint)):
        assert "s3cret" not in text
        assert "t0ken" not in text
