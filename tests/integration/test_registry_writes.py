"""The operator's registry writes against a real MLflow server: alias moves and removals, version
tags with the keys the operator uses, and a read-only user's refusal mapped to a clear error."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from aliasroll.errors import RegistryAuthFailed
from aliasroll.registry.client import RegistryClient
from aliasroll.registry.types import Credentials, Endpoint
from mlflowserver import MlflowServer
from support.registry import quick_versions


def test_alias_moves_removals_and_tags(
    mlflow_server: MlflowServer, registry: MlflowClient, model_name: str
) -> None:
    quick_versions(registry, model_name, 2)
    registry.set_registered_model_alias(model_name, "canary", "2")
    client, endpoint = RegistryClient(), Endpoint(mlflow_server.url)

    client.set_alias(endpoint, model_name, "production", "2")
    assert registry.get_registered_model(model_name).aliases == {"canary": "2", "production": "2"}
    client.delete_alias(endpoint, model_name, "canary")
    client.delete_alias(endpoint, model_name, "canary")  # already gone: not an error
    assert registry.get_registered_model(model_name).aliases == {"production": "2"}

    served = "aliasroll.io/served/ml/sentiment/production/20261125T100000Z"
    tags = {"aliasroll.io/canary.outcome": "promoted", served: "2026-11-25T10:00:00Z to now (serving)"}
    client.set_version_tags(endpoint, model_name, "2", tags)
    client.set_version_tags(endpoint, model_name, "2", tags)  # idempotent
    assert registry.get_model_version(model_name, "2").tags == tags


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowServer, Credentials]:
    from test_registry_auth import ADMIN_PASSWORD

    data = tmp_path_factory.mktemp("mlflow-readonly")
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
        extra_env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"},
    )
    return server, Credentials(username="admin", password=ADMIN_PASSWORD)


def test_a_read_only_user_s_writes_are_refused_with_a_clear_error(
    read_only: tuple[MlflowServer, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    server, admin = read_only
    with server:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", str(admin.username))
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", str(admin.password))
        quick_versions(MlflowClient(tracking_uri=server.url, registry_uri=server.url), "guarded-writes", 1)
        created = requests.post(
            f"{server.url}/api/2.0/mlflow/users/create",
            json={"username": "reader", "password": "reader-password-123"},
            auth=(str(admin.username), str(admin.password)),
            timeout=10,
        )
        assert created.ok, created.text
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

        reader = Endpoint(server.url, Credentials(username="reader", password="reader-password-123"))
        client = RegistryClient()
        assert client.model_aliases(reader, "guarded-writes") == {}, "reads are allowed"
        with pytest.raises(RegistryAuthFailed) as caught:
            client.set_version_tags(
                reader, "guarded-writes", "1", {"aliasroll.io/canary.outcome": "promoted"}
            )
        assert "did not let the operator tag version 1 of 'guarded-writes'" in str(caught.value)
        assert "give them EDIT permission on the model" in str(caught.value)
        assert "reader-password-123" not in str(caught.value)
