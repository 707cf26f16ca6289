"""Reading registry credentials from a Secret: only MLflow's keys are read, whatever else it holds."""

from __future__ import annotations

import base64

import pytest

from aliasroll.errors import CredentialsNotFound
from aliasroll.kube.credentials import credentials_from, secret_values


def encoded(value: bytes) -> str:
    return base64.b64encode(value).decode()


# A PKCS#12 keystore or a gzip'd CA bundle next to MLflow's keys: not UTF-8, and not ours to read.
BINARY = encoded(b"\x1f\x8b\x08\x00\xff\xfe\x80")


def test_binary_keys_beside_the_mlflow_keys_are_left_alone() -> None:
    data = {"MLFLOW_TRACKING_TOKEN": encoded(b"s3cret"), "keystore.p12": BINARY}
    values = secret_values(data, secret_name="mlflow")
    assert values == {"MLFLOW_TRACKING_TOKEN": "s3cret"}
    credentials = credentials_from(values, secret_name="mlflow", present_keys=data.keys())
    assert credentials.token == "s3cret"


def test_username_password_and_insecure_tls() -> None:
    data = {
        "MLFLOW_TRACKING_USERNAME": encoded(b"alice"),
        "MLFLOW_TRACKING_PASSWORD": encoded(b"pw"),
        "MLFLOW_TRACKING_INSECURE_TLS": encoded(b"true"),
        "ca.der": BINARY,
    }
    credentials = credentials_from(secret_values(data, secret_name="mlflow"), secret_name="mlflow")
    assert (credentials.username, credentials.password, credentials.insecure_tls) == ("alice", "pw", True)


def test_a_binary_mlflow_key_is_named() -> None:
    with pytest.raises(CredentialsNotFound, match="MLFLOW_TRACKING_TOKEN of Secret 'mlflow' is not text"):
        secret_values({"MLFLOW_TRACKING_TOKEN": BINARY}, secret_name="mlflow")


def test_missing_keys_lists_what_the_secret_has_without_values() -> None:
    data = {"username": encoded(b"alice"), "keystore.p12": BINARY}
    with pytest.raises(CredentialsNotFound) as caught:
        credentials_from(secret_values(data, secret_name="mlflow"), secret_name="mlflow", present_keys=data)
    assert "it has: keystore.p12, username" in caught.value.message
    assert "alice" not in caught.value.message
