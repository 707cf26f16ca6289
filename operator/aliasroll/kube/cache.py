"""Watch-fed caches: one list+watch per kind, filtered on the server, read by every pass.

A pass reads the objects a resource owns (and their pods) from memory instead of listing them: with
1,000 resources a list per kind per pass would be thousands of LISTs a minute, each one paid for by
the API server. Each `Informer` lists its kind once, with the managed-by label as selector, then
follows a watch from that list's resourceVersion:

- 410 Gone (the version is older than what the API server keeps) means events were lost: list again
  and replace everything, so a deletion that happened in the gap is not kept forever.
- Any other error (a dropped connection, a restarted API server) resumes the watch from the last
  version seen, after a backoff; only a failed list is reported to passes.
- A kind that is not installed (the Gateway API CRDs) is an empty, synced cache, listed again now
  and then in case it is installed later.

A pass plans only on a cache whose first list has finished (`Informer.ready`): before it, a pass
waits a little and then fails like a failed LIST did (no apply, no prune without a full picture).
After it, the cache may trail the API server by a moment; see `OwnedCache` for why that is safe.

What is kept of each object is a bounded projection, never the object a watch delivers
(kube/projection.py): owned kinds keep an object only when its controller ownerReference is a
ModelDeployment, and then only what passes read (`owned_projection`); pods only what passes read of
them (`pod_projection`). Lists come in pages, so a relist holds at most a page of such objects at once.

Each watch holds a connection for as long as it runs (HTTP/1.1), so the informers of a cache get a
client of their own whose pool has exactly as many connections as they are (`pooled_client`): a
watch that reconnects never waits behind another cache's watches, nor behind a pass's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ALL_NS, AsyncClient, KubeConfig, SingleConfig
from lightkube.config.client_adapter import ConnectionParams
from lightkube.core.exceptions import ApiError
from lightkube.core.generic_client import GenericAsyncClient
from lightkube.core.resource import api_info
from lightkube.generic_resource import GenericNamespacedResource, create_api_info
from lightkube.resources.core_v1 import Pod

from aliasroll.backoff import Backoff
from aliasroll.errors import AliasrollError, KubernetesApplyFailed, KubernetesUnavailable
from aliasroll.kube.failures import api_failure
from aliasroll.kube.projection import owned_projection, owner_index, pod_projection
from aliasroll.kube.resources import OWNED_KINDS
from aliasroll.labels import LABEL_GATED, LABEL_MANAGED_BY, MANAGER
from aliasroll.spec import ResourceRef

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
IndexKey = Callable[[Mapping[str, Any]], Hashable | None]
OnChange = Callable[[Mapping[str, Any]], None]
# What a cache keeps of an object a watch delivers; None: nothing (not an object the operator reads).
Keep = Callable[[dict[str, Any]], dict[str, Any] | None]
# How long a pass waits for a cache's first list before it fails (and is retried with backoff).
SYNC_WAIT_SECONDS = 10.0
# How often a kind that is not installed is looked for again.
ABSENT_RETRY_SECONDS = 30.0
# The API server closes a watch after this many seconds; it is opened again from the last version.
WATCH_SECONDS = 290
# Objects per page of a list: what a list holds in memory at once, however large the objects are
# (up to about 1.5 MiB each). A list is made at start and after a 410 only, so pages cost little.
LIST_PAGE = 50


@dataclass
class _PooledParams(ConnectionParams):
    """lightkube's connection parameters, with httpx's pool limits (passed on like the others)."""

    limits: httpx2.Limits = field(default_factory=httpx2.Limits)


class PooledClient(AsyncClient):
    """A lightkube client whose connection pool holds `connections` connections.

    With HTTP/1.1 a watch holds its connection for as long as it runs (about `WATCH_SECONDS`), and a
    request that finds every connection taken waits, then fails (httpx's PoolTimeout). The informers
    of one cache each hold at most one connection at a time (a list, then its watch), so a pool of as
    many connections as informers is never waited for; nothing else uses it.
    """

    def __init__(
        self,
        *,
        connections: int,
        config: SingleConfig | KubeConfig | None = None,
        timeout: httpx2.Timeout | None = None,
    ) -> None:
        # AsyncClient.__init__, with the limits added: lightkube passes every connection parameter
        # on to httpx's client, but has no argument for the limits.
        self._timeout = timeout or httpx2.Timeout(10.0)
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = GenericAsyncClient(
            _PooledParams(timeout=self._timeout, limits=limits), config, field_manager=MANAGER
        )
        self.connections = connections


class Store:
    """The objects of one kind, by (namespace, name), with an index. No I/O: the informer feeds it."""

    def __init__(self, index: IndexKey) -> None:
        self._index_key = index
        self._objects: dict[Key, Mapping[str, Any]] = {}
        self._index: dict[Hashable, set[Key]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._objects.get((namespace, name))

    def indexed(self, key: Hashable) -> list[Mapping[str, Any]]:
        return [self._objects[k] for k in sorted(self._index.get(key, ()))]

    def apply(self, event: str, obj: Mapping[str, Any]) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED); True when it changed what is stored."""
        key = _key(obj)
        before = self._objects.get(key)
        if event == "DELETED":
            if before is None:
                return False
            self._remove(key, before)
            return True
        if before is not None and _unversioned(before) == _unversioned(obj):
            # The same version again (a watch resumed from an older version), or a new version that
            # changed nothing this store keeps (a status it drops): kept, but not a change.
            self._objects[key] = obj
            return False
        if before is not None:
            self._remove(key, before)
        self._objects[key] = obj
        if (index := self._index_key(obj)) is not None:
            self._index.setdefault(index, set()).add(key)
        return True

    def remove(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Forgets an object (deleted, or no longer one this store keeps); returns what it held."""
        before = self._objects.get((namespace, name))
        if before is not None:
            self._remove((namespace, name), before)
        return before

    def replace(self, objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """A fresh list: everything it has, nothing else. Returns what changed, deletions included
        (the stored object), so their owners are woken."""
        fresh = {_key(obj): obj for obj in objects}
        changed = [old for key, old in self._objects.items() if key not in fresh]
        changed += [
            obj for key, obj in fresh.items() if _version(self._objects.get(key) or {}) != _version(obj)
        ]
        self._objects = {}
        self._index = {}
        for obj in fresh.values():
            self.apply("ADDED", obj)
        return changed

    def _remove(self, key: Key, obj: Mapping[str, Any]) -> None:
        del self._objects[key]
        index = self._index_key(obj)
        if index is not None and (keys := self._index.get(index)) is not None:
            keys.discard(key)
            if not keys:
                del self._index[index]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _unversioned(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata") or {}
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}


def raw(resource: Any) -> type[GenericNamespacedResource]:
    """The same API path as `resource`, decoded as plain JSON (a dict): a typed model per watch
    event costs far more CPU than the operator's reads of a few fields."""
    info = api_info(resource)
    group, version = info.resource.group, info.resource.version
    kind, plural = info.resource.kind, info.plural

    class Raw(GenericNamespacedResource):
        _api_info = create_api_info(group, version, kind, plural)

    Raw.__name__ = Raw.__qualname__ = f"Raw{kind}"
    return Raw


def _code(error: BaseException) -> int | None:
    # An ERROR event in a watch stream becomes an ApiError with a Status but no HTTP response.
    if isinstance(error, ApiError):
        return error.status.code
    if isinstance(error, httpx2.HTTPStatusError):
        return error.response.status_code
    return None


class Informer:
    """Lists and watches one kind in one namespace (or all), keeping a Store of what matches."""

    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        *,
        namespace: str = ALL_NS,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        index: IndexKey = owner_index,
        on_change: OnChange | None = None,
        keep: Keep = dict,
        backoff: Backoff | None = None,
        absent_retry: float = ABSENT_RETRY_SECONDS,
    ) -> None:
        self._client = client
        self._resource = raw(resource)
        self.kind = api_info(resource).resource.kind
        self._namespace = namespace
        self._labels: dict[str, Any] = dict(labels or {})
        self._fields: dict[str, Any] = dict(fields or {})
        self._on_change = on_change
        self._keep = keep
        self._backoff = backoff or Backoff(base=1.0, cap=30.0)
        self._absent_retry = absent_retry
        self.store = Store(index)
        self.ready = asyncio.Event()  # set once the first list is in; stays set
        self._answered = asyncio.Event()  # set once a list has been answered, either way
        self.error: AliasrollError | None = None  # why the last list failed, until one succeeds
        self.lists = 0  # lists made, for tests and logs
        self._seen: str | None = None  # the resourceVersion of the last event
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            if not self.ready.is_set():
                self._answered.clear()  # set by a stop before the first list came
            self._task = asyncio.create_task(self.run(), name=f"watch {self.kind} {self._where()}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._answered.set()  # a pass waiting for a first list that will not come waits no longer

    async def wait_ready(self, patience: float) -> None:
        """Returns once the first list is in. Raises what the last list failed with, at once when
        one has failed (a pass must not hold its slot waiting on an RBAC error), or that the list
        has not answered after `patience` seconds."""
        if self.ready.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience):
                await self._answered.wait()
        if self.ready.is_set():
            return
        if isinstance(self.error, KubernetesApplyFailed):
            raise self.error  # RBAC, most likely: the user's to fix, shown in status
        raise KubernetesUnavailable(
            f"the operator's cache of {self.kind} objects has not been filled yet"
            + (f": {self.error.message}" if self.error is not None else "")
        )

    async def run(self) -> None:
        version: str | None = None
        failures = 0
        selector = ",".join(f"{k}={v}" for k, v in {**self._labels, **self._fields}.items())
        log.info("Watching %s objects %s (%s).", self.kind, self._where(), selector or "all")
        while True:
            try:
                if version is None:
                    version = await self._list()
                    failures = 0
                    if version is None:  # the kind is not served: look again later
                        await asyncio.sleep(self._absent_retry)
                        continue
                await self._watch(version)
                failures = 0
            except asyncio.CancelledError:
                raise
            except httpx2.HTTPError as error:
                if version is not None:
                    version = self._seen or version  # resume after the last event seen
                if _code(error) == 410:
                    log.info("watch %s %s: 410 Gone; listing again", self.kind, self._where())
                    version = None
                    continue
                if version is not None and _code(error) == 404:
                    # The kind went away (its CRD deleted, and its objects with it): list again
                    # after the backoff, which empties the cache and wakes their owners.
                    version = None
                    listing = False
                else:
                    listing = version is None
                failures += 1
                if listing:  # the list failed: passes say so until one succeeds
                    self.error = api_failure("list", self.kind, None, error)
                    self._answered.set()
                delay = self._backoff.delay(failures)
                log.warning(
                    "watch %s %s failed (attempt %d, again in %.1f s): %s",
                    self.kind,
                    self._where(),
                    failures,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
            except Exception:  # a bug, or an answer that cannot be decoded: list afresh
                failures += 1
                log.exception("watch %s %s crashed (attempt %d)", self.kind, self._where(), failures)
                version = None
                await asyncio.sleep(self._backoff.delay(failures))

    async def _list(self) -> str | None:
        """Replaces the store with a fresh list; returns the list's resourceVersion, or None when the
        kind is not served (a bare 404: its CRD is not installed)."""
        items: list[Mapping[str, Any]] = []
        try:
            listed = self._client.list(
                self._resource,
                namespace=self._namespace,
                chunk_size=LIST_PAGE,
                labels=self._labels or None,
                fields=self._fields or None,
            )
            async for item in listed:
                if (kept := self._keep(self._as_dict(item))) is not None:
                    items.append(kept)
        except httpx2.HTTPStatusError as error:
            if _code(error) != 404:
                raise
            items, version = [], None
        else:
            version = listed.resourceVersion
        self.lists += 1
        changed = self.store.replace(items)
        self.error = None
        self._answered.set()
        if self.ready.is_set():
            self._notify(changed)  # a relist: what changed while events were lost
        else:
            self.ready.set()  # the first: passes waiting for it read it; nobody needs waking
        return version

    async def _watch(self, version: str) -> None:
        """Follows the watch from `version`, keeping the last version seen, so a watch that breaks
        is resumed where it stopped."""
        self._seen = version
        async for event, item in self._client.watch(
            self._resource,
            namespace=self._namespace,
            labels=self._labels or None,
            fields=self._fields or None,
            server_timeout=WATCH_SECONDS,
            resource_version=version,
        ):
            obj = self._as_dict(item)
            self._seen = _version(obj) or self._seen
            if event not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK
            kept = self._keep(obj) if event != "DELETED" else None
            if kept is None:  # gone, or no longer one this cache keeps (its owner reference removed)
                if (gone := self.store.remove(*_key(obj))) is not None:
                    self._notify((gone,))
            elif self.store.apply(event, kept):
                self._notify((kept,))
        # lightkube reconnects on its own when the server ends a watch; an end here is unexpected.

    def _as_dict(self, item: Any) -> dict[str, Any]:
        data: dict[str, Any] = dict(item)
        info = api_info(self._resource).resource
        # Lists leave apiVersion and kind out of items.
        data.setdefault("apiVersion", info.api_version)
        data.setdefault("kind", info.kind)
        return data

    def _notify(self, changed: Iterable[Mapping[str, Any]]) -> None:
        if self._on_change is None:
            return
        for obj in changed:
            try:
                self._on_change(obj)
            except Exception:  # a wake must never end the watch
                log.exception("watch %s: waking the owner failed", self.kind)

    def _where(self) -> str:
        return "cluster-wide" if self._namespace == ALL_NS else f"in '{self._namespace}'"


class OwnedCache:
    """Every kind the operator owns, and the serving pods, from one watch each per namespace.

    Filtered on the server by the managed-by label, indexed by (namespace, owner label). Of the owned
    kinds only objects controlled by a ModelDeployment are kept (`owned_projection`), of pods only
    those of a ReplicaSet (`pod_projection`); a pass then keeps only the objects whose controller
    ownerReference is its resource's uid.

    Its client should be its own (`PooledClient` of `connections(namespaces)`): each informer holds
    a connection while it watches.

    The cache trails the API server by a moment, which is safe for what a pass does with it:
    - apply: an object the pass wrote a moment ago may still look old or missing; server-side apply is
      idempotent, so a stale read costs at most one extra (no-op) apply, never a wrong object.
    - taken names: an object missing from the cache is looked up by name, and one this resource
      controls is ours (just created), never a conflict.
    - prune: only objects the cache has seen can be pruned, and it deletes nothing it has not seen;
      an object it lists that is already gone is a 404, which counts as pruned.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespaces: Iterable[str] = (),
        wake: Callable[[tuple[str, str]], None] | None = None,
        sync_wait: float = SYNC_WAIT_SECONDS,
        wake_for_pod: Callable[[tuple[str, str]], None] | None = None,
    ) -> None:
        self._wake = wake
        # A gated pod's change wakes its owner this way when given (sooner: scheduler.POD_SETTLE).
        self._wake_for_pod = wake_for_pod or wake
        self._sync_wait = sync_wait
        selector = {LABEL_MANAGED_BY: MANAGER}
        scopes = tuple(namespaces) or (ALL_NS,)

        def informers(resource: Any, on_change: OnChange | None, keep: Keep) -> dict[str, Informer]:
            return {
                scope: Informer(
                    client, resource, namespace=scope, labels=selector, on_change=on_change, keep=keep
                )
                for scope in scopes
            }

        # Of what the operator owns, passes read the status of Deployments only (rollout progress):
        # a budget's or a Service's status changes keep the same projection, and wake nobody.
        self._owned = {
            key: informers(resource, self._changed, owned_projection) for key, resource in OWNED_KINDS.items()
        }
        # Pods change often (every probe result): they are read by passes, and a reason for one only
        # in version mode (spec.rollback), where a new pod waits for its gate and a Ready one may let a
        # leaving version go. The projection keeps what passes read, so a change is one that matters.
        self._pods = informers(Pod, self._pod_changed, pod_projection)

    @staticmethod
    def connections(namespaces: Iterable[str] = ()) -> int:
        """The connections its informers hold at most: one per kind (and pods) per watched scope,
        and one to spare for a connection the server has closed but the pool not yet let go."""
        return (len(OWNED_KINDS) + 1) * max(1, len(set(namespaces))) + 1

    def _all(self) -> list[Informer]:
        return [i for by_scope in (*self._owned.values(), self._pods) for i in by_scope.values()]

    def start(self) -> None:
        for informer in self._all():
            informer.start()

    async def stop(self) -> None:
        for informer in self._all():
            await informer.stop()

    @property
    def lists(self) -> int:
        return sum(informer.lists for informer in self._all())

    async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        """The objects of every owned kind that carry the owner's label. Raises KubernetesApplyFailed
        or KubernetesUnavailable when a cache has not finished its first list."""
        found: list[Mapping[str, Any]] = []
        for by_scope in self._owned.values():
            informer = self._scope(by_scope, owner.namespace)
            await informer.wait_ready(self._sync_wait)
            found += informer.store.indexed((owner.namespace, owner.name))
        return found

    async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
        informer = self._scope(self._pods, owner.namespace)
        await informer.wait_ready(self._sync_wait)
        return informer.store.indexed((owner.namespace, owner.name))

    def _scope(self, by_scope: Mapping[str, Informer], namespace: str) -> Informer:
        informer = by_scope.get(ALL_NS) or by_scope.get(namespace)
        if informer is None:  # a resource outside the watched namespaces: never handed over by Kopf
            raise KubernetesApplyFailed(f"namespace {namespace!r} is not watched by this operator")
        return informer

    def _pod_changed(self, obj: Mapping[str, Any]) -> None:
        gated = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_GATED)
        if gated and self._wake_for_pod is not None and (owner := owner_index(obj)) is not None:
            self._wake_for_pod(owner)

    def _changed(self, obj: Mapping[str, Any]) -> None:
        # Rollout progress and hand edits (drift) of owned objects: the owner's next pass looks again.
        if self._wake is not None and (owner := owner_index(obj)) is not None:
            self._wake(owner)
