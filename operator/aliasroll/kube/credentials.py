"""Registry credentials from a Secret whose keys are MLflow's own variable names.

The same Secret is given to serving pods with envFrom (unless spec.serving.credentialsSecretRef names
one of their own, say a read-only token), so one Secret can serve the operator (to resolve aliases)
and the pods (to download the pinned version). Only MLflow's keys are read: the Secret may hold
other things. Values never leave this module except inside a Credentials object, whose repr is masked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from aliasroll.errors import CredentialsNotFound, KubernetesApplyFailed
from aliasroll.kube.cache import SYNC_WAIT_SECONDS, Informer
from aliasroll.registry.types import Credentials

USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
TOKEN = "MLFLOW_TRACKING_TOKEN"
INSECURE_TLS = "MLFLOW_TRACKING_INSECURE_TLS"
MLFLOW_KEYS = (USERNAME, PASSWORD, TOKEN, INSECURE_TLS)


class SecretCache:
    """Each referenced Secret read once per change: one list+watch per Secret (a field selector on
    its name, so nothing else is read), started by the first resource that names it and stopped
    when the last one no longer does. A change wakes the resources that name it, so a Secret
    created or fixed later takes effect at once, without retries.

    Only the MLflow keys' values are kept (and the other keys' names, for error messages)."""

    def __init__(self, client: AsyncClient, *, sync_wait: float = SYNC_WAIT_SECONDS) -> None:
        self._client = client
        self._sync_wait = sync_wait
        self._informers: dict[SecretKey, Informer] = {}
        self._users: dict[SecretKey, dict[str, Wake]] = {}  # who reads each Secret, and how to wake them
        self._used: dict[str, SecretKey] = {}  # what each resource (uid) reads

    async def credentials(self, *, uid: str, namespace: str, secret_name: str, wake: Wake) -> Credentials:
        key = (namespace, secret_name)
        if self._used.get(uid) not in (None, key):
            self.release(uid)
        self._used[uid] = key
        self._users.setdefault(key, {})[uid] = wake
        informer = self._informers.get(key)
        if informer is None:
            informer = self._informers[key] = Informer(
                self._client,
                Secret,
                namespace=namespace,
                fields={"metadata.name": secret_name},
                index=lambda _: None,
                on_change=lambda _: self._wake(key),
                keep=_mlflow_keys_only,
            )
            informer.start()
        try:
            await informer.wait_ready(self._sync_wait)
        except KubernetesApplyFailed:
            raise CredentialsNotFound(
                f"the operator may not read Secret {secret_name!r} in namespace {namespace!r} "
                "(RBAC: it needs list and watch on secrets)"
            ) from None
        secret = informer.store.get(namespace, secret_name)
        if secret is None:
            raise CredentialsNotFound(
                f"Secret {secret_name!r} (spec.registry.credentialsSecretRef) does not exist in "
                f"namespace {namespace!r}"
            )
        data: Mapping[str, str] = secret.get("data") or {}
        names: Iterable[str] = secret.get(KEY_NAMES) or ()
        return credentials_from(
            secret_values(data, secret_name=secret_name), secret_name=secret_name, present_keys=names
        )

    def release(self, uid: str) -> None:
        """The resource no longer reads a Secret (deleted, or it names another)."""
        key = self._used.pop(uid, None)
        if key is None:
            return
        users = self._users.get(key, {})
        users.pop(uid, None)
        if not users:
            self._users.pop(key, None)
            informer = self._informers.pop(key, None)
            if informer is not None:
                task = asyncio.ensure_future(informer.stop())
                _stopping.add(task)
                task.add_done_callback(_stopping.discard)

    async def stop(self) -> None:
        for informer in list(self._informers.values()):
            await informer.stop()
        self._informers.clear()

    def _wake(self, key: SecretKey) -> None:
        for wake in list(self._users.get(key, {}).values()):
            wake()


SecretKey = tuple[str, str]  # (namespace, name)
Wake = Callable[[], None]
KEY_NAMES = "keyNames"  # where a cached Secret keeps the names of all its keys
_stopping: set[asyncio.Future[None]] = set()


def _mlflow_keys_only(secret: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Secret: never more of its values than the operator reads."""
    data = secret.get("data") or {}
    meta = secret.get("metadata") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("namespace", "name", "resourceVersion")},
        "data": {key: data[key] for key in MLFLOW_KEYS if key in data},
        KEY_NAMES: sorted(data),
    }


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
