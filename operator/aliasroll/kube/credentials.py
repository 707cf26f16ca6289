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
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from aliasroll.errors import CredentialsNotFound, KubernetesApplyFailed, KubernetesUnavailable
from aliasroll.kube.cache import SYNC_WAIT_SECONDS, Informer, raw
from aliasroll.kube.failures import api_failure
from aliasroll.registry.types import Credentials

USERNAME = "MLFLOW_TRACKING_USERNAME"
PASSWORD = "MLFLOW_TRACKING_PASSWORD"
TOKEN = "MLFLOW_TRACKING_TOKEN"
INSECURE_TLS = "MLFLOW_TRACKING_INSECURE_TLS"
MLFLOW_KEYS = (USERNAME, PASSWORD, TOKEN, INSECURE_TLS)


log = logging.getLogger(__name__)

# At most this many Secrets are watched at once (a connection each); the others are read when a pass
# needs them. Which ones are watched is shared fairly between namespaces (SecretCache).
SECRET_WATCHES = 32
# One-shot reads of Secrets that are not watched, at most this many at a time.
SECRET_READS = 4
# A Secret that does not exist is watched this long after a pass first missed it (it is often created
# a moment after the resource that names it), then read when a pass needs it.
MISSING_WATCH_SECONDS = 600.0
# A Secret that is not watched is read again when a pass needs it and its last read is this old.
REREAD_SECONDS = 60.0
# Of a Secret, an MLflow key's value longer than this (base64) is not kept: no token is that long.
MAX_VALUE_CHARS = 64 * 1024
# Of a Secret's other keys, at most this many names are kept (for messages).
MAX_KEY_NAMES = 64

SecretKey = tuple[str, str]  # (namespace, name)
Wake = Callable[[], None]
KEY_NAMES = "keyNames"  # where a cached Secret keeps the names of its keys
TOO_LONG = "tooLong"  # and of the MLflow keys whose values it did not keep
_stopping: set[asyncio.Future[None]] = set()
_RAW_SECRET = raw(Secret)


@dataclass(eq=False)
class _Entry:
    """One referenced Secret: who reads it, and either its watch or its last read."""

    key: SecretKey
    users: dict[str, Wake] = field(default_factory=dict)  # uid -> how to wake that resource
    informer: Informer | None = None
    watched_since: float = 0.0
    missing_since: float | None = None  # watched, and the Secret did not exist when a pass looked
    secret: Mapping[str, Any] | None = None  # not watched: what the last read found (None: no Secret)
    read_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SecretCache:
    """The Secrets resources name, each read only by its name (a field selector on metadata.name: no
    other Secret is ever read), from the first resource that names it until the last one no longer
    does. Only the MLflow keys' values are kept (and the other keys' names, for error messages).

    Most are watched: read once, and a change wakes the resources that name them, so a Secret created
    or fixed later takes effect at once. But a watch holds a connection for as long as it runs, and
    how many Secrets are named is up to the tenants, so at most `watches` are watched at once, on the
    cache's own client (`CONNECTIONS`), shared fairly between namespaces: a namespace that holds no
    more than one watch fewer than any other gets one, taken from the namespace that holds the most
    when all are in use. The others are read (a list with the same field selector) when a pass needs
    them and their last read is older than `reread`; a change found by a read wakes the other
    resources that name the Secret. When a watch ends, the Secret read longest ago of the namespace
    that holds the fewest takes its place.

    A Secret that does not exist is watched for `missing_watch` seconds after a pass first missed it,
    then read like the others: a name that is never created holds no connection for long.
    """

    CONNECTIONS = SECRET_WATCHES + SECRET_READS + 1  # the +1: a watch whose connection is closing

    def __init__(
        self,
        client: AsyncClient,
        *,
        sync_wait: float = SYNC_WAIT_SECONDS,
        watches: int = SECRET_WATCHES,
        reads: int = SECRET_READS,
        missing_watch: float = MISSING_WATCH_SECONDS,
        reread: float = REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._sync_wait = sync_wait
        self._watches = watches
        self._reads = asyncio.Semaphore(reads)
        self._missing_watch = missing_watch
        self._reread = reread
        self._clock = clock
        self._entries: dict[SecretKey, _Entry] = {}
        self._used: dict[str, SecretKey] = {}  # what each resource (uid) reads
        self.reads = 0  # one-shot reads made, for tests and logs

    @property
    def watched(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.informer is not None)

    async def credentials(self, *, uid: str, namespace: str, secret_name: str, wake: Wake) -> Credentials:
        key = (namespace, secret_name)
        if self._used.get(uid) not in (None, key):
            self.release(uid)
        self._used[uid] = key
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(key, users={uid: wake})
            await self._try_watch(entry)
        entry.users[uid] = wake
        secret = await self._secret(entry, reader=uid)
        if secret is None:
            raise CredentialsNotFound(
                f"Secret {secret_name!r} (spec.registry.credentialsSecretRef) does not exist in "
                f"namespace {namespace!r}"
            )
        if too_long := secret.get(TOO_LONG):
            raise CredentialsNotFound(
                f"key {too_long[0]} of Secret {secret_name!r} is longer than the operator reads "
                f"({MAX_VALUE_CHARS} characters)"
            )
        data: Mapping[str, str] = secret.get("data") or {}
        names: Iterable[str] = secret.get(KEY_NAMES) or ()
        return credentials_from(
            secret_values(data, secret_name=secret_name), secret_name=secret_name, present_keys=names
        )

    def release(self, uid: str) -> None:
        """The resource no longer reads a Secret (deleted, or it names another)."""
        key = self._used.pop(uid, None)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            return
        entry.users.pop(uid, None)
        if not entry.users:
            del self._entries[entry.key]
            if entry.informer is not None:
                self._stop(entry)
                self._fill()

    async def stop(self) -> None:
        for entry in list(self._entries.values()):
            if entry.informer is not None:
                informer, entry.informer = entry.informer, None
                await informer.stop()

    async def _secret(self, entry: _Entry, *, reader: str) -> Mapping[str, Any] | None:
        informer = entry.informer
        if informer is not None:
            try:
                await informer.wait_ready(self._sync_wait)
            except KubernetesApplyFailed:
                raise _forbidden(entry.key) from None
            except KubernetesUnavailable:
                if entry.informer is informer:
                    raise
                return await self._secret(entry, reader=reader)  # its watch went elsewhere first: read
            secret = informer.store.get(*entry.key)
            now = self._clock()
            if secret is not None:
                entry.missing_since = None
                return secret
            if entry.missing_since is None:
                entry.missing_since = now
            if now - entry.missing_since < self._missing_watch or entry.informer is not informer:
                return None
            log.info(
                "Secret %s/%s has not existed for %.0f s: no longer watched, read when a pass needs it",
                *entry.key,
                now - entry.missing_since,
            )
            self._stop(entry)
            self._fill()
            return None
        async with entry.lock:  # passes of the resources that name it share one read
            if entry.informer is None and (
                entry.read_at is None or self._clock() - entry.read_at >= self._reread
            ):
                await self._read(entry, reader=reader)
        return entry.secret

    async def _read(self, entry: _Entry, *, reader: str) -> None:
        namespace, name = entry.key
        try:
            async with self._reads:
                self.reads += 1
                listed = self._client.list(_RAW_SECRET, namespace=namespace, fields={"metadata.name": name})
                found = [_mlflow_keys_only(dict(item)) async for item in listed]
        except httpx2.HTTPError as error:
            failure = api_failure("list", "Secret", name, error)
            if isinstance(failure, KubernetesApplyFailed):
                raise _forbidden(entry.key) from None
            if entry.read_at is None:
                raise failure from None
            # Credentials change seldom: what the last read found serves until a read succeeds.
            log.warning("reading Secret %s/%s failed; its last read serves: %s", namespace, name, error)
            return
        secret = found[0] if found else None
        before, first = entry.secret, entry.read_at is None
        entry.secret, entry.read_at = secret, self._clock()
        if not first and _version(before) != _version(secret):
            self._wake(entry, but=reader)  # the others that name it: this pass has it already
        if secret is not None:
            await self._try_watch(entry)

    async def _try_watch(self, entry: _Entry) -> None:
        """Watches the Secret if a watch is free, or fairly taken from another namespace."""
        while entry.informer is None and self._entries.get(entry.key) is entry:
            if self.watched < self._watches:
                self._watch(entry)
                return
            victim = self._victim(entry.key[0])
            if victim is None:
                return
            log.info(
                "Secret %s/%s: no longer watched (read when a pass needs it), its watch goes to %s/%s",
                *victim.key,
                *entry.key,
            )
            await self._stop(victim)  # its connection is back before the new watch takes one

    def _victim(self, namespace: str) -> _Entry | None:
        """The newest watch of the namespace that holds the most, if it holds at least two more
        than `namespace` (so that taking it never calls for taking it back)."""
        watched = [entry for entry in self._entries.values() if entry.informer is not None]
        held = Counter(entry.key[0] for entry in watched)
        richest, most = max(held.items(), key=lambda item: (item[1], item[0]), default=("", 0))
        if most < held[namespace] + 2:
            return None
        return max(
            (entry for entry in watched if entry.key[0] == richest),
            key=lambda entry: (entry.missing_since is not None, entry.watched_since),
        )

    def _watch(self, entry: _Entry) -> None:
        key = entry.key
        entry.informer = Informer(
            self._client,
            Secret,
            namespace=key[0],
            fields={"metadata.name": key[1]},
            index=lambda _: None,
            on_change=lambda _: self._wake(entry),
            keep=_mlflow_keys_only,
        )
        entry.watched_since, entry.missing_since = self._clock(), None
        entry.informer.start()

    def _stop(self, entry: _Entry) -> asyncio.Future[None]:
        """Ends the watch: from now on the Secret is read, starting from what the watch knew (if its
        first list was in)."""
        informer, entry.informer = entry.informer, None
        assert informer is not None
        listed = informer.ready.is_set()
        entry.secret = informer.store.get(*entry.key) if listed else None
        entry.read_at = self._clock() if listed else None
        task = asyncio.ensure_future(informer.stop())
        _stopping.add(task)
        task.add_done_callback(_stopping.discard)
        return task

    def _fill(self) -> None:
        """A watch is free: the Secrets that exist and are read instead take it, those of the
        namespace holding the fewest watches first, then the one read longest ago."""
        while self.watched < self._watches:
            held = Counter(entry.key[0] for entry in self._entries.values() if entry.informer is not None)
            waiting = [
                entry
                for entry in self._entries.values()
                if entry.informer is None and entry.secret is not None and entry.users
            ]
            if not waiting:
                return
            self._watch(min(waiting, key=lambda entry: (held[entry.key[0]], entry.read_at or 0.0)))

    def _wake(self, entry: _Entry, *, but: str | None = None) -> None:
        for uid, wake in list(entry.users.items()):
            if uid != but:
                wake()


def _forbidden(key: SecretKey) -> CredentialsNotFound:
    return CredentialsNotFound(
        f"the operator may not read Secret {key[1]!r} in namespace {key[0]!r} "
        "(RBAC: it needs list and watch on secrets)"
    )


def _version(secret: Mapping[str, Any] | None) -> str | None:
    return None if secret is None else (secret.get("metadata") or {}).get("resourceVersion")


def _mlflow_keys_only(secret: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Secret: never more of its values than the operator reads, and those
    only up to MAX_VALUE_CHARS (so a Secret's size never becomes the operator's)."""
    data = secret.get("data") or {}
    meta = secret.get("metadata") or {}
    kept = {key: data[key] for key in MLFLOW_KEYS if key in data}
    too_long = sorted(key for key, value in kept.items() if len(str(value)) > MAX_VALUE_CHARS)
    return {
        "metadata": {k: meta.get(k) for k in ("namespace", "name", "resourceVersion")},
        "data": {key: value for key, value in kept.items() if key not in too_long},
        KEY_NAMES: sorted(data)[:MAX_KEY_NAMES],
        **({TOO_LONG: too_long} if too_long else {}),
    }


def missing_keys(values: Mapping[str, str]) -> str:
    """What a Secret without usable credentials lacks, in MLflow's key names only (an empty value
    counts as missing)."""
    if values.get(USERNAME) and not values.get(PASSWORD):
        return f"lacks {PASSWORD} (beside {USERNAME}), or {TOKEN}"
    if values.get(PASSWORD) and not values.get(USERNAME):
        return f"lacks {USERNAME} (beside {PASSWORD}), or {TOKEN}"
    return f"lacks {TOKEN}, or both {USERNAME} and {PASSWORD}"


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
    """The credentials of a Secret's MLflow keys (`secret_values`). A Secret without usable ones gets
    a message naming only the MLflow keys it lacks: never its other keys (`present_keys` is not
    said), since whoever reads the resource's status may not be allowed to read the Secret."""
    del present_keys
    username, password, token = values.get(USERNAME), values.get(PASSWORD), values.get(TOKEN)
    if not token and not (username and password):
        raise CredentialsNotFound(f"Secret {secret_name!r} {missing_keys(values)}")
    return Credentials(
        username=username or None,
        password=password or None,
        token=token or None,
        insecure_tls=values.get(INSECURE_TLS, "").lower() in ("1", "true", "yes"),
    )
