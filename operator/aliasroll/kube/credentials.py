"""Registry credentials from a Secret whose keys are MLflow's own variable names.

The same Secret is given to serving pods with envFrom (unless spec.serving.credentialsSecretRef names
one of their own, say a read-only token), so one Secret can serve the operator (to resolve aliases)
and the pods (to download the pinned version). Only MLflow's keys are read: the Secret may hold
other things. Values never leave this module except inside a Credentials object, whose repr is masked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

import httpx2
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from aliasroll.errors import CredentialsNotFound
from aliasroll.kube.failures import api_failure, status_code
from aliasroll.registry.types import Credentials

USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
TOKEN = "MLFLOW_TRACKING_TOKEN"
INSECURE_TLS = "MLFLOW_TRACKING_INSECURE_TLS"
MLFLOW_KEYS = (USERNAME, PASSWORD, TOKEN, INSECURE_TLS)


async def read_credentials(client: AsyncClient, *, namespace: str, secret_name: str) -> Credentials:
    try:
        secret = await client.get(Secret, secret_name, namespace=namespace)
    except httpx2.HTTPError as error:
        code = status_code(error)
        if code == 404:
            raise CredentialsNotFound(
                f"Secret {secret_name!r} (spec.registry.credentialsSecretRef) does not exist in "
                f"namespace {namespace!r}"
            ) from None
        if code == 403:
            raise CredentialsNotFound(
                f"the operator may not read Secret {secret_name!r} in namespace {namespace!r} (RBAC)"
            ) from None
        raise api_failure("read", "Secret", secret_name, error) from None
    data = secret.data or {}
    return credentials_from(
        secret_values(data, secret_name=secret_name), secret_name=secret_name, present_keys=data.keys()
    )


def secret_values(data: Mapping[str, str], *, secret_name: str) -> dict[str, str]:
    """The MLflow keys of a Secret's data, decoded; every other key is left alone.

    A Secret may hold more than MLflow's variables (a CA bundle, a keystore, a token for another
    tool): decoding those could fail on binary values, and they are none of the operator's business.
    """
    values: dict[str, str] = {}
    for key in MLFLOW_KEYS:
        if (encoded := data.get(key)) is None:
            continue
        try:
            values[key] = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsNotFound(
                f"key {key} of Secret {secret_name!r} is not text (base64 of UTF-8)"
            ) from None
    return values


def credentials_from(
    values: Mapping[str, str], *, secret_name: str, present_keys: Iterable[str] | None = None
) -> Credentials:
    """`present_keys` are all the Secret's key names (not values), to say what it holds instead."""
    username, password, token = values.get(USERNAME), values.get(PASSWORD), values.get(TOKEN)
    if not token and not (username and password):
        raise CredentialsNotFound(
            f"Secret {secret_name!r} needs {TOKEN}, or both {USERNAME} and {PASSWORD} "
            f"(it has: {', '.join(sorted(values if present_keys is None else present_keys)) or 'no keys'})"
        )
    return Credentials(
        username=username or None,
        password=password or None,
        token=token or None,
        insecure_tls=values.get(INSECURE_TLS, "").lower() in ("1", "true", "yes"),
    )
