"""Registry credentials from a Secret whose keys are MLflow's own variable names.

The same Secret is mounted into serving pods with envFrom, so one Secret serves the operator (to
resolve aliases) and the pods (to download the pinned version). Values never leave this module
except inside a Credentials object, whose repr is masked.
"""

from __future__ import annotations

import base64

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
    values = {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
    values.update(secret.stringData or {})
    return credentials_from(values, secret_name=secret_name)


def credentials_from(values: dict[str, str], *, secret_name: str) -> Credentials:
    username, password, token = values.get(USERNAME), values.get(PASSWORD), values.get(TOKEN)
    if not token and not (username and password):
        raise CredentialsNotFound(
            f"Secret {secret_name!r} needs {TOKEN}, or both {USERNAME} and {PASSWORD} "
            f"(it has: {', '.join(sorted(values)) or 'no keys'})"
        )
    return Credentials(
        username=username or None,
        password=password or None,
        token=token or None,
        insecure_tls=values.get(INSECURE_TLS, "").lower() in ("1", "true", "yes"),
    )
