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


# Review 2026-12 finding 15: the message listed every key of the Secret ("it has: keystore.p12,
# username"), to whoever may read the resource's status.
MISSING: list[tuple[str, dict[str, str], str]] = [
    (
        "no MLflow key",
        {"username": "alice"},
        "lacks MLFLOW_TRACKING_TOKEN, or both MLFLOW_TRACKING_USERNAME and",
    ),
    (
        "a user without a password",
        {"MLFLOW_TRACKING_USERNAME": "alice"},
        "lacks MLFLOW_TRACKING_PASSWORD (beside MLFLOW_TRACKING_USERNAME), or MLFLOW_TRACKING_TOKEN",
    ),
    (
        "a password without a user",
        {"MLFLOW_TRACKING_PASSWORD": "pw"},
        "lacks MLFLOW_TRACKING_USERNAME (beside MLFLOW_TRACKING_PASSWORD), or MLFLOW_TRACKING_TOKEN",
    ),
    ("an empty token", {"MLFLOW_TRACKING_TOKEN": ""}, "lacks MLFLOW_TRACKING_TOKEN"),
]


@pytest.mark.parametrize(("case", "keys", "said"), MISSING, ids=[m[0] for m in MISSING])
def test_a_secret_without_credentials_names_only_the_mlflow_keys_it_lacks(
    case: str, keys: dict[str, str], said: str
) -> None:
    data = {key: encoded(value.encode()) for key, value in keys.items()}
    data |= {"keystore.p12": BINARY, "db-password": encoded(b"hunter2")}
    with pytest.raises(CredentialsNotFound) as caught:
        credentials_from(secret_values(data, secret_name="mlflow"), secret_name="mlflow", present_keys=data)
    message = caught.value.message
    assert message.startswith("Secret 'mlflow' "), message
    assert said in message, case
    for other in ("keystore.p12", "db-password", "username", "alice", "hunter2"):
        assert other not in message, (case, message)
