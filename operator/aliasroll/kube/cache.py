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

What is kept of each object is a bounded projection, never the object a watch delivers: anyone who
may create a Deployment (or a pod) can give it the managed-by label and a large annotation, in any
namespace. Owned kinds keep an object only when its controller ownerReference is a ModelDeployment,
and then only what passes read (`owned_projection`); pods only what passes read of them
(`pod_projection`). Lists come in pages, so a relist holds at most a page of such objects at once.

Each watch holds a connection for as long as it runs (HTTP/1.1), so the informers of a cache get a
client of their own whose pool has exactly as many connections as they are (`pooled_client`): a
watch that reconnects never waits behind another cache's watches, nor behind a pass's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from aliasroll.kube.resources import OWNED_KINDS
from aliasroll.labels import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_RUN_ID,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    LABEL_TRACK,
    LABEL_VERSION,
    MANAGER,
)
from aliasroll.planning.workloads import ADMIN_PORT_NAME, CONTAINER_NAME, HTTP_PORT_NAME
from aliasroll.spec import GROUP, KIND, ResourceRef

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
# Messages kept of a condition or a container's state are cut at this many characters: the kubelet's
# own bound on a termination message, which no real message passes.
MAX_MESSAGE = 4096
# Of an owned object, the fields the operator applied are kept up to this many characters of values
# (a Deployment it writes holds a few thousand). Past it none are kept, so the pass applies the object
# again (a no-op apply, by the same field manager, which also drops what it no longer writes).
MAX_APPLIED_CHARS = 128 * 1024
# Container statuses kept of a pod: the serving container, and a sidecar or two.
MAX_CONTAINERS = 4
# Where a kept owned object holds the fields the operator applied (owned_projection).
APPLIED = "aliasroll.io/applied"


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


def owner_index(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, owner name) from the label the operator puts on everything it makes (and that
    the pod template gives to pods)."""
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(LABEL_OWNER)
    return (str(meta.get("namespace") or ""), str(owner)) if owner else None


def controller_of(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference marked controller (an object has at most one), or None."""
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


# The labels passes read (the owner index, the track, the version); no other label is kept.
_LABELS = (LABEL_MANAGED_BY, LABEL_OWNER, LABEL_TRACK, LABEL_VERSION)
_IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation")
_DEPLOYMENT_COUNTS = (
    "observedGeneration",
    "replicas",
    "updatedReplicas",
    "readyReplicas",
    "availableReplicas",
    "unavailableReplicas",
)


def owned_projection(obj: dict[str, Any]) -> dict[str, Any] | None:
    """What a cache of an owned kind keeps of an object: None unless its controller ownerReference is
    a ModelDeployment, else a bounded projection of it.

    Kept: the object's identity, the labels passes read and its controller reference; of a
    Deployment what `observe.reduce_deployment` reads (replicas, the version its template pins, the
    rollout's counts and conditions); and, as compact JSON under APPLIED (a few KiB, where the same
    fields as dicts take seven times that), every field the operator applied, found through the
    object's managedFields. The applier compares the objects it wants with these (`applied_view`,
    `applier.up_to_date`) to skip applies that would change nothing. A field someone else changed by
    hand is no longer the operator's in managedFields: it is then missing there, and the next pass
    applies it again, as it did when it compared whole objects. Nothing others added (annotations,
    sidecars, status) is kept.
    """
    meta = obj.get("metadata") or {}
    controller = controller_of(meta)
    if (
        controller is None
        or controller.get("kind") != KIND
        or str(controller.get("apiVersion") or "").partition("/")[0] != GROUP
    ):
        return None  # not a ModelDeployment's: no pass reads it, whatever labels it has
    labels = meta.get("labels") or {}
    kept: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            **{key: meta[key] for key in _IDENTITY if key in meta},
            "labels": {key: labels[key] for key in _LABELS if key in labels},
            # The controller reference as it is (the operator's own, or one that took its place):
            # who controls the object is what observe() and the applier compare.
            "ownerReferences": [
                {key: _cut(controller[key], 253) for key in _REF_FIELDS if key in controller}
            ],
        },
    }
    if obj.get("kind") == "Deployment":
        kept.update(_deployment_essentials(obj))
    applied = _applied(obj, meta.get("managedFields"))
    if applied is not None:
        kept[APPLIED] = json.dumps(applied, separators=(",", ":"), ensure_ascii=False)
    return kept


def applied_view(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A kept object as the applier compares it: what the operator applied, with what else is kept
    (the controller reference as it is). An object without APPLIED is itself."""
    encoded = obj.get(APPLIED)
    if not isinstance(encoded, str):
        return obj
    rest = {key: value for key, value in obj.items() if key != APPLIED}
    view = _merged(json.loads(encoded), rest)
    view["metadata"]["ownerReferences"] = rest["metadata"]["ownerReferences"]
    return view


_REF_FIELDS = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")


def _deployment_essentials(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    template_labels = template_meta.get("labels") or {}
    template_annotations = template_meta.get("annotations") or {}
    kept_spec: dict[str, Any] = {
        "template": {
            "metadata": {
                "labels": {k: template_labels[k] for k in (LABEL_VERSION,) if k in template_labels},
                "annotations": {
                    k: _cut(template_annotations[k], MAX_MESSAGE)
                    for k in (ANNOTATION_MODEL_URI, ANNOTATION_RUN_ID)
                    if k in template_annotations
                },
            }
        }
    }
    if "replicas" in spec:
        kept_spec["replicas"] = spec["replicas"]
    kept_status: dict[str, Any] = {key: status[key] for key in _DEPLOYMENT_COUNTS if key in status}
    conditions = [
        {
            key: _cut(condition[key], MAX_MESSAGE)
            for key in ("type", "status", "reason", "message")
            if key in condition
        }
        for condition in (status.get("conditions") or ())[:8]
        if isinstance(condition, Mapping)
    ]
    if conditions:
        kept_status["conditions"] = conditions
    return {"spec": kept_spec, "status": kept_status}


def _applied(obj: Mapping[str, Any], managed: Any) -> dict[str, Any] | None:
    """The fields of `obj` that the operator's field manager applied (its managedFields entries of
    operation Apply), or None when there are none or they hold more than MAX_APPLIED_CHARS."""
    fields: dict[str, Any] = {}
    for entry in managed or ():
        if (
            isinstance(entry, Mapping)
            and entry.get("manager") == MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
            and isinstance(entry.get("fieldsV1"), Mapping)
        ):
            fields = _union(fields, entry["fieldsV1"])
    if not fields:
        return None
    budget = [MAX_APPLIED_CHARS]
    selected = _select(obj, fields, budget)
    return selected if type(selected) is dict and budget[0] >= 0 else None


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _union(merged[key], value) if key in merged else value
    return merged


def _select(value: Any, fields: Mapping[str, Any], budget: list[int]) -> Any:
    """The parts of `value` a managedFields set (fieldsV1) names: `f:<name>` a field of an object,
    `k:<json>` the item of a list whose keys have these values, `v:<json>` the item equal to it,
    `i:<n>` the n-th item; an empty set (or only `.`), the whole value (a scalar, or an atomic map
    or list). Runs on every event of an owned kind: decoded JSON is plain dicts and lists."""
    if type(value) is dict:
        selected: dict[str, Any] = {}
        for key, sub in fields.items():
            if key[:2] == "f:" and (name := key[2:]) in value:
                item = value[name]
                if sub and (len(sub) > 1 or "." not in sub) and type(item) in (dict, list):
                    selected[name] = _select(item, sub, budget)
                else:
                    budget[0] -= _chars(item)
                    selected[name] = item
            elif key == "." and len(fields) == 1:
                budget[0] -= _chars(value)
                return value
        return selected if fields else _whole(value, budget)
    if type(value) is list and any(key != "." for key in fields):
        items = _item_keys(fields)
        chosen: list[Any] = []
        for index, item in enumerate(value):
            for match, sub in items:
                if match(index, item):
                    whole = not sub or (len(sub) == 1 and "." in sub) or type(item) is not dict
                    chosen.append(_whole(item, budget) if whole else _select(item, sub, budget))
                    break
        return chosen
    return _whole(value, budget)


def _whole(value: Any, budget: list[int]) -> Any:
    budget[0] -= _chars(value)
    return value


ItemMatch = Callable[[int, Any], bool]


def _item_keys(members: Mapping[str, Any]) -> list[tuple[ItemMatch, Mapping[str, Any]]]:
    """How to find the list items a managedFields set names, each key decoded once per list."""
    found: list[tuple[ItemMatch, Mapping[str, Any]]] = []
    for key, sub in members.items():
        kind, _, literal = key.partition(":")
        try:
            if kind == "k":
                found.append((_keyed(json.loads(literal)), sub))
            elif kind == "v":
                found.append((_equal(json.loads(literal)), sub))
            elif kind == "i":
                found.append((_at_index(int(literal)), sub))
        except (ValueError, AttributeError):
            continue  # not a path element this reader knows: no item is kept for it
    return found


def _keyed(keys: Mapping[str, Any]) -> ItemMatch:
    pairs = tuple(keys.items())  # AttributeError when the key is not an object
    return lambda _, item: type(item) is dict and all(item.get(k) == v for k, v in pairs)


def _equal(value: Any) -> ItemMatch:
    return lambda _, item: bool(item == value)


def _at_index(at: int) -> ItemMatch:
    return lambda index, _: index == at


def _chars(value: Any) -> int:
    if type(value) is str:
        return len(value)
    if type(value) is dict:
        return sum(len(key) + _chars(item) for key, item in value.items())
    if type(value) is list:
        return sum(_chars(item) for item in value)
    return 8


def _merged(applied: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """Both are read from the same object: maps are merged, anything else is the applied value."""
    merged = dict(applied)
    for key, value in kept.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        elif key not in merged:
            merged[key] = value
    return merged


def _cut(value: Any, limit: int) -> Any:
    return value[:limit] if isinstance(value, str) else value


def pod_projection(pod: dict[str, Any]) -> dict[str, Any] | None:
    """What the pod cache keeps of a pod: None unless a ReplicaSet controls it and it names its
    owner in the owner label, else what passes read of it (its identity, the labels passes read, its
    IP, whether it is Ready, of a few containers why they fail and which run of them answers, and
    the serving container's two named ports, where the canary analysis reads /metrics). The rest
    of the spec, a copy of the Deployment's template, and the annotations are most of a pod's size."""
    meta = pod.get("metadata") or {}
    controller = controller_of(meta)
    labels = meta.get("labels") or {}
    if controller is None or controller.get("kind") != "ReplicaSet" or LABEL_OWNER not in labels:
        return None
    status = pod.get("status") or {}
    kept_status: dict[str, Any] = {
        "conditions": [
            {"type": "Ready", "status": c.get("status")}
            for c in status.get("conditions") or ()
            if isinstance(c, Mapping) and c.get("type") == "Ready"
        ][:1],
        "containerStatuses": [
            _container(c)
            for c in (status.get("containerStatuses") or ())[:MAX_CONTAINERS]
            if isinstance(c, Mapping)
        ],
    }
    if "podIP" in status:
        kept_status["podIP"] = _cut(status["podIP"], 64)
    kept = {
        "apiVersion": pod.get("apiVersion"),
        "kind": pod.get("kind"),
        "metadata": {
            **{key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta},
            "labels": {key: labels[key] for key in _LABELS if key in labels},
        },
        "status": kept_status,
    }
    ports = _serving_ports(pod.get("spec") or {})
    if ports:
        kept["spec"] = {"containers": [{"name": CONTAINER_NAME, "ports": ports}]}
    return kept


def _serving_ports(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The serving container's ports named http and admin, in a pod's own shape."""
    for container in (spec.get("containers") or ())[:MAX_CONTAINERS]:
        if isinstance(container, Mapping) and container.get("name") == CONTAINER_NAME:
            return [
                {"name": port["name"], "containerPort": port["containerPort"]}
                for port in (container.get("ports") or ())[:8]
                if isinstance(port, Mapping)
                and port.get("name") in (HTTP_PORT_NAME, ADMIN_PORT_NAME)
                and type(port.get("containerPort")) is int
            ]
    return []


def _container(status: Mapping[str, Any]) -> dict[str, Any]:
    """What observe.container_failure and controller.analyzer.container_identity read of a container."""
    kept: dict[str, Any] = {
        key: _cut(status[key], 253)
        for key in ("name", "ready", "restartCount", "containerID")
        if key in status
    }
    state = status.get("state") or {}
    kept["state"] = {
        phase: _state(state[phase])
        for phase in ("waiting", "running", "terminated")
        if isinstance(state.get(phase), Mapping)
    }
    last = (status.get("lastState") or {}).get("terminated")
    if isinstance(last, Mapping):
        kept["lastState"] = {"terminated": _state(last)}
    return kept


def _state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _cut(state[key], MAX_MESSAGE) for key in ("reason", "message", "exitCode") if key in state}


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
    ) -> None:
        self._wake = wake
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
        # Pods change often (every probe result): they are read by passes, never a reason for one.
        self._pods = informers(Pod, None, pod_projection)

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

    def _changed(self, obj: Mapping[str, Any]) -> None:
        # Rollout progress and hand edits (drift) of owned objects: the owner's next pass looks again.
        if self._wake is not None and (owner := owner_index(obj)) is not None:
            self._wake(owner)
