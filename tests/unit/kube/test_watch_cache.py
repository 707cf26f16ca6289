"""The watch-fed cache: its index, a relist after 410 Gone, a watch resumed after a dropped
connection, and passes held back until the first list is in.

The client here is scripted (lists and watch streams as the API server answers them); that the
cache works against the real API server is proven in tests/e2e/test_watch_cache_e2e.py.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import httpx2
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from aliasroll.errors import KubernetesApplyFailed, KubernetesUnavailable
from aliasroll.kube.applier import up_to_date
from aliasroll.kube.cache import Informer, OwnedCache, Store
from aliasroll.kube.credentials import SecretCache
from aliasroll.kube.observe import observe, reduce_deployment
from aliasroll.kube.projection import owned_projection, owner_index, pod_projection
from aliasroll.labels import LABEL_GATED, LABEL_OWNER
from aliasroll.spec import ResourceRef

Obj = dict[str, Any]


def controller(owner: str = "m", *, kind: str = "ModelDeployment", uid: str = "u-m") -> Obj:
    api_version = "aliasroll.io/v1alpha1" if kind == "ModelDeployment" else "apps/v1"
    return {"apiVersion": api_version, "kind": kind, "name": owner, "uid": uid, "controller": True}


def obj(name: str, *, owner: str | None = "m", version: str = "1", namespace: str = "ml") -> Obj:
    labels = {LABEL_OWNER: owner} if owner else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "resourceVersion": version,
            "ownerReferences": [controller(owner or "m")],
        },
    }


def pod(name: str, *, owner: str = "m", version: str = "1") -> Obj:
    """A serving pod, as its ReplicaSet makes it."""
    made = obj(name, owner=owner, version=version)
    made["metadata"]["ownerReferences"] = [controller(f"{owner}-production-5d8", kind="ReplicaSet")]
    return {**made, "kind": "Pod"}


# The store: pure.


def test_the_index_finds_an_owners_objects_and_follows_label_changes() -> None:
    store = Store(owner_index)
    store.apply("ADDED", obj("a"))
    store.apply("ADDED", obj("b", owner="other"))
    store.apply("ADDED", obj("c", namespace="elsewhere"))
    assert [o["metadata"]["name"] for o in store.indexed(("ml", "m"))] == ["a"]
    store.apply("MODIFIED", obj("b", owner="m", version="2"))  # relabelled to our owner
    assert [o["metadata"]["name"] for o in store.indexed(("ml", "m"))] == ["a", "b"]
    assert store.indexed(("ml", "other")) == []
    store.apply("DELETED", obj("a", version="3"))
    assert [o["metadata"]["name"] for o in store.indexed(("ml", "m"))] == ["b"]


@pytest.mark.parametrize(
    ("case", "event", "changed"),
    [
        ("new object", ("ADDED", obj("z")), True),
        ("same version again (a resumed watch)", ("MODIFIED", obj("a")), False),
        ("newer version", ("MODIFIED", obj("a", owner="n", version="2")), True),
        ("newer version, nothing kept changed", ("MODIFIED", obj("a", version="2")), False),
        ("deletion", ("DELETED", obj("a")), True),
        ("deletion of what was never seen", ("DELETED", obj("y")), False),
    ],
)
def test_an_event_changes_the_store_only_when_it_says_something_new(
    case: str, event: tuple[str, Obj], changed: bool
) -> None:
    store = Store(owner_index)
    store.apply("ADDED", obj("a"))
    assert store.apply(*event) is changed


def test_a_relist_replaces_everything_and_reports_deletions_and_changes() -> None:
    store = Store(owner_index)
    for name in ("kept", "changed", "gone"):
        store.apply("ADDED", obj(name))
    changed = store.replace([obj("kept"), obj("changed", version="2"), obj("new")])
    assert sorted(o["metadata"]["name"] for o in changed) == ["changed", "gone", "new"]
    assert store.get("ml", "gone") is None
    assert [o["metadata"]["name"] for o in store.indexed(("ml", "m"))] == ["changed", "kept", "new"]


# The informer, with a scripted client.


def api_error(code: int, message: str) -> ApiError:
    request = httpx2.Request("GET", "https://127.0.0.1:6443/api/v1/services")
    status = {"kind": "Status", "code": code, "message": message}
    return ApiError(request=request, response=httpx2.Response(code, json=status, request=request))


def watch_error(code: int) -> ApiError:
    # An ERROR event in the stream: a Status, no HTTP response (as lightkube raises it).
    return ApiError(status=Status(code=code, message="too old resource version", reason="Expired"))


class Listed:
    def __init__(self, items: list[Obj], version: str) -> None:
        self.items, self.resourceVersion = items, version

    async def __aiter__(self) -> AsyncIterator[Obj]:
        for item in self.items:
            yield item


Step = Callable[[], Any]


class ScriptedClient:
    """Answers lists from `lists` and watches from `watches`, in order; each watch is a list of
    events, then an exception to end it with (or None: wait until cancelled)."""

    def __init__(
        self, lists: list[Listed | Exception], watches: list[tuple[list[tuple[str, Obj]], Exception | None]]
    ):
        self.lists, self.watches = lists, watches
        self.listed = 0
        self.watched_from: list[str | None] = []
        self.gate: asyncio.Event | None = None  # when set: events wait for it

    def list(self, resource: Any, **_: Any) -> Listed:
        answer = self.lists[min(self.listed, len(self.lists) - 1)]
        self.listed += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, resource: Any, *, resource_version: str | None = None, **_: Any) -> AsyncIterator[Any]:
        self.watched_from.append(resource_version)
        events, end = self.watches.pop(0) if self.watches else ([], None)

        async def stream() -> AsyncIterator[Any]:
            if self.gate is not None:
                await self.gate.wait()
            for event in events:
                yield event
            if end is not None:
                raise end
            await asyncio.Event().wait()

        return stream()


def informer(client: ScriptedClient, woken: list[str] | None = None) -> Informer:
    from lightkube.resources.core_v1 import Service

    from aliasroll.backoff import Backoff

    return Informer(
        cast(AsyncClient, client),
        Service,
        on_change=(lambda o: woken.append(o["metadata"]["name"])) if woken is not None else None,
        backoff=Backoff(base=0.01, cap=0.01),
        absent_retry=0.01,
    )


async def settle(check: Callable[[], bool], *, within: float = 5) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polls a plain condition of the code under test
            await asyncio.sleep(0.005)


def test_410_gone_lists_again_and_forgets_what_was_deleted_in_the_gap() -> None:
    client = ScriptedClient(
        lists=[Listed([obj("a"), obj("b")], "10"), Listed([obj("b"), obj("c", version="12")], "12")],
        watches=[([("MODIFIED", obj("b", version="11"))], watch_error(410))],
    )
    woken: list[str] = []

    async def scenario() -> Informer:
        cache = informer(client, woken)
        cache.start()
        await settle(lambda: client.listed == 2 and cache.store.get("ml", "c") is not None)
        await cache.stop()
        return cache

    cache = asyncio.run(scenario())
    assert cache.store.get("ml", "a") is None, "deleted while events were lost: gone after the relist"
    assert client.watched_from[:2] == ["10", "12"], "each watch starts at its list's version"
    assert {"a", "b", "c"} <= set(woken), "owners of the deleted, the changed and the new are woken"


def test_a_dropped_connection_resumes_the_watch_without_a_list() -> None:
    client = ScriptedClient(
        lists=[Listed([obj("a")], "10")],
        watches=[([("MODIFIED", obj("a", version="11"))], httpx2.ReadError("connection reset"))],
    )

    async def scenario() -> Informer:
        cache = informer(client)
        cache.start()
        await settle(lambda: len(client.watched_from) == 2)
        await cache.stop()
        return cache

    cache = asyncio.run(scenario())
    assert client.listed == 1
    assert client.watched_from == ["10", "11"], "resumed from the last version seen"
    assert (cache.store.get("ml", "a") or {})["metadata"]["resourceVersion"] == "11"


def test_a_kind_that_is_not_installed_is_an_empty_ready_cache() -> None:
    not_served = httpx2.HTTPStatusError(
        "404 page not found",
        request=httpx2.Request("GET", "https://x/apis/gateway.networking.k8s.io/v1/httproutes"),
        response=httpx2.Response(404, text="404 page not found"),
    )
    client = ScriptedClient(lists=[not_served], watches=[])

    async def scenario() -> Informer:
        cache = informer(client)
        cache.start()
        await cache.wait_ready(1.0)
        await cache.stop()
        return cache

    cache = asyncio.run(scenario())
    assert len(cache.store) == 0
    assert client.watched_from == [], "nothing to watch"


@pytest.mark.parametrize(
    ("case", "failure", "raised", "says"),
    [
        ("forbidden", api_error(403, "services is forbidden"), KubernetesApplyFailed, "(RBAC)"),
        ("throttled", api_error(429, "storage is (re)initializing"), KubernetesUnavailable, "storage"),
        ("no answer", httpx2.ConnectError("connection refused"), KubernetesUnavailable, "did not answer"),
    ],
)
def test_a_pass_waits_for_the_first_list_and_then_fails_with_its_error(
    case: str, failure: Exception, raised: type[Exception], says: str
) -> None:
    client = ScriptedClient(lists=[failure], watches=[])

    async def scenario() -> None:
        cache = informer(client)
        cache.start()
        try:
            await settle(lambda: client.listed >= 1)
            await cache.wait_ready(0.1)
        finally:
            await cache.stop()

    with pytest.raises(raised, match=None) as caught:
        asyncio.run(scenario())
    assert says in str(caught.value)


def test_owners_are_woken_by_their_objects_but_not_by_their_pods() -> None:
    service, serving_pod = obj("m"), pod("m-production-x1")
    later = obj("m-canary")

    class Client(ScriptedClient):
        def list(self, resource: Any, **_: Any) -> Listed:
            kind = resource._api_info.resource.kind
            return Listed({"Service": [service], "Pod": [serving_pod]}.get(kind, []), "5")

        def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
            kind = resource._api_info.resource.kind
            events = {"Service": [("ADDED", later)], "Pod": [("MODIFIED", {**serving_pod, "status": {}})]}
            self.watches = [(events.get(kind, []), None)]
            return super().watch(resource, **_)

    woken: list[tuple[str, str]] = []
    owner = ResourceRef(namespace="ml", name="m", uid="u", generation=1)

    async def scenario() -> tuple[list[Any], list[Any]]:
        cache = OwnedCache(cast(AsyncClient, Client(lists=[], watches=[])), wake=woken.append)
        cache.start()
        try:
            await settle(lambda: bool(woken))
            await asyncio.sleep(0.05)
            return await cache.owned(owner), await cache.pods(owner)
        finally:
            await cache.stop()

    owned, pods = asyncio.run(scenario())
    assert sorted(o["metadata"]["name"] for o in owned) == ["m", "m-canary"]
    assert [p["metadata"]["name"] for p in pods] == ["m-production-x1"]
    assert woken == [("ml", "m")], "the new Service woke its owner; the first list and the pod did not"


def test_a_gated_pods_change_wakes_its_owner_by_the_pods_own_wake() -> None:
    """Version mode (spec.rollback): a pod with the gate's mark wakes its owner through
    `wake_for_pod` (the scheduler's short POD_SETTLE), not the settle of other children's changes."""
    gated = pod("m-v2-x1")
    gated["metadata"]["labels"][LABEL_GATED] = "true"
    plain = pod("n-production-x1", owner="n")

    class Client(ScriptedClient):
        def list(self, resource: Any, **_: Any) -> Listed:
            kind = resource._api_info.resource.kind
            return Listed({"Pod": [gated, plain]}.get(kind, []), "5")

        def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
            kind = resource._api_info.resource.kind
            changed = [
                ("MODIFIED", {**p, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
                for p in (gated, plain)
            ]
            self.watches = [(changed if kind == "Pod" else [], None)]
            return super().watch(resource, **_)

    woken: list[tuple[str, str]] = []
    by_pod: list[tuple[str, str]] = []

    async def scenario() -> None:
        cache = OwnedCache(
            cast(AsyncClient, Client(lists=[], watches=[])), wake=woken.append, wake_for_pod=by_pod.append
        )
        cache.start()
        try:
            await settle(lambda: bool(by_pod))
            await asyncio.sleep(0.05)
        finally:
            await cache.stop()

    asyncio.run(scenario())
    assert by_pod == [("ml", "m")], "the gated pod woke its owner; the other pod did not"
    assert woken == []


def test_a_secret_is_read_once_and_its_change_wakes_who_reads_it() -> None:
    import base64

    def secret(token: str, version: str) -> Obj:
        encoded = base64.b64encode(token.encode()).decode()
        data = {"MLFLOW_TRACKING_TOKEN": encoded, "ca.crt": "eA=="}
        return {"metadata": {"name": "creds", "namespace": "ml", "resourceVersion": version}, "data": data}

    client = ScriptedClient(
        lists=[Listed([secret("one", "1")], "1")],
        watches=[([("MODIFIED", secret("two", "2"))], None)],
    )
    woken: list[str] = []

    async def scenario() -> tuple[str | None, str | None, list[Any]]:
        secrets = SecretCache(cast(AsyncClient, client))
        client.gate = asyncio.Event()
        first = await secrets.credentials(
            uid="u", namespace="ml", secret_name="creds", wake=lambda: woken.append("u")
        )
        assert woken == [], "the first list wakes nobody: the reader was waiting for it"
        client.gate.set()  # the Secret changes
        await settle(lambda: bool(woken))
        second = await secrets.credentials(
            uid="u", namespace="ml", secret_name="creds", wake=lambda: woken.append("u")
        )
        kept = [e.informer.store.get("ml", "creds") for e in secrets._entries.values() if e.informer]
        secrets.release("u")
        await secrets.stop()
        return first.token, second.token, kept

    first, second, kept = asyncio.run(scenario())
    assert (first, second) == ("one", "two")
    assert client.listed == 1, "read once, then followed"
    assert kept[0] is not None
    assert "ca.crt" not in kept[0]["data"], "only MLflow's keys are kept"


def test_a_status_no_pass_reads_wakes_nobody() -> None:
    """A budget's or a Service's status moves with every pod; only a Deployment's (the rollout's
    progress) is a reason for a pass."""
    service = obj("m")
    deployment = {**obj("m-production"), "apiVersion": "apps/v1", "kind": "Deployment", "status": {}}
    service_status = {**obj("m", version="6"), "status": {"loadBalancer": {}}}
    rolled = {**deployment, "metadata": {**deployment["metadata"], "resourceVersion": "7"}}
    rolled["status"] = {"availableReplicas": 1}

    class Client(ScriptedClient):
        def list(self, resource: Any, **_: Any) -> Listed:
            kind = resource._api_info.resource.kind
            return Listed({"Service": [service], "Deployment": [deployment]}.get(kind, []), "5")

        def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
            kind = resource._api_info.resource.kind
            events = {"Service": [("MODIFIED", service_status)], "Deployment": [("MODIFIED", rolled)]}
            self.watches = [(events.get(kind, []), None)]
            return super().watch(resource, **_)

    woken: list[tuple[str, str]] = []

    async def scenario() -> None:
        cache = OwnedCache(cast(AsyncClient, Client(lists=[], watches=[])), wake=woken.append)
        cache.start()
        try:
            await settle(lambda: bool(woken))
            await asyncio.sleep(0.05)
        finally:
            await cache.stop()

    asyncio.run(scenario())
    assert woken == [("ml", "m")], (
        "the Deployment's progress woke its owner, once; the Service's status did not"
    )


# What is kept of an object: only a ModelDeployment's objects, and of them a bounded projection.

BIG = 256 * 1024  # the most annotations an object may have, in bytes
OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1", generation=3)


def _key_fields(list_name: str, item: Obj) -> tuple[str, ...]:
    if list_name == "ownerReferences":
        return ("uid",)
    if list_name == "ports":
        return ("containerPort", "protocol") if "containerPort" in item else ("port", "protocol")
    if list_name == "volumeMounts":
        return ("mountPath",)
    return ("name",)


def fields_v1(value: Any, name: str = "") -> Obj:
    """The managedFields set (fieldsV1) server-side apply records for what a manager applied: maps
    field by field, list-maps item by item under their keys; selectors (atomic maps) and lists of
    scalars (atomic lists) as a whole."""
    if isinstance(value, dict) and name != "selector":
        return {f"f:{key}": fields_v1(item, key) for key, item in value.items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {
            "k:" + json.dumps({k: item[k] for k in _key_fields(name, item)}, separators=(",", ":")): {
                ".": {},
                **fields_v1(item),
            }
            for item in value
        }
    return {}


def entry(manager: str, fields: Obj, *, operation: str = "Update", subresource: str | None = None) -> Obj:
    made = {"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": fields}
    return {**made, "subresource": subresource} if subresource else made


def live(manifest: Obj, *, blob: str | None = None) -> Obj:
    """`manifest` as the API server keeps it once the operator applied it: its identity, defaults,
    the managedFields of the operator's apply, the rollout's status, and a large annotation another
    tool added."""
    applied = copy.deepcopy(manifest)
    del applied["apiVersion"], applied["kind"], applied["metadata"]["name"], applied["metadata"]["namespace"]
    obj = copy.deepcopy(manifest)
    meta = obj["metadata"]
    meta.update(uid="obj-uid", resourceVersion="7", generation=2, creationTimestamp="2026-12-01T00:00:00Z")
    meta["annotations"] = {
        "deployment.kubernetes.io/revision": "3",
        "notes.example.com/blob": blob or "x" * BIG,
    }
    meta["managedFields"] = [
        entry("aliasroll", fields_v1(applied), operation="Apply"),
        entry("kubectl-annotate", {"f:metadata": {"f:annotations": {"f:notes.example.com/blob": {}}}}),
    ]
    if obj["kind"] == "Deployment":
        pod_spec = obj["spec"]["template"]["spec"]
        pod_spec.update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="default-scheduler")
        for container in pod_spec["containers"]:
            container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
            container["readinessProbe"]["httpGet"]["scheme"] = "HTTP"
        obj["status"] = {
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "ok",
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "message": "done",
                },
            ],
        }
        meta["managedFields"].append(
            entry("kube-controller-manager", {"f:status": {"f:replicas": {}}}, subresource="status")
        )
    if obj["kind"] == "Service":
        obj["spec"].update(clusterIP="10.0.3.4", clusterIPs=["10.0.3.4"], sessionAffinity="None")
        obj["status"] = {"loadBalancer": {}}
    return obj


@functools.cache
def _manifests() -> dict[str, Obj]:
    from builders import spec

    from aliasroll.planning.state import ServedVersion
    from aliasroll.planning.workloads import WorkloadDefaults, deployment, pod_disruption_budget, service
    from aliasroll.spec import Track

    served = spec(
        serving={"env": [{"name": "BATCH", "value": "8"}], "resources": {"limits": {"memory": "2Gi"}}}
    )
    version = ServedVersion(model="sentiment", version="4", run_id="run-4")
    return {
        "Deployment": deployment(
            owner=OWNER,
            spec=served,
            track=Track.PRODUCTION,
            version=version,
            replicas=2,
            defaults=WorkloadDefaults(image="aliasroll/serving:test"),
        ),
        "Service": service(owner=OWNER, name="sentiment", selector={LABEL_OWNER: "sentiment"}, spec=served),
        "PodDisruptionBudget": pod_disruption_budget(owner=OWNER, track=Track.PRODUCTION, replicas=2),
    }


def manifests() -> dict[str, Obj]:
    return copy.deepcopy(_manifests())


def seen_by_the_applier(whole: Obj) -> Mapping[str, Any]:
    """What the applier compares the wanted object with, once the cache kept `whole`."""
    projected = owned_projection(copy.deepcopy(whole))
    assert projected is not None
    kept: Mapping[str, Any] = projected

    class Objects:
        async def owned(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
            return [kept]

        async def pods(self, owner: ResourceRef) -> list[Mapping[str, Any]]:
            return []

    observation = asyncio.run(observe(Objects(), OWNER))
    return observation.live[(whole["kind"], whole["metadata"]["name"])]


@pytest.mark.parametrize("kind", ["Deployment", "Service", "PodDisruptionBudget"])
def test_the_projection_keeps_what_the_applier_compares_and_what_passes_read(kind: str) -> None:
    manifest = manifests()[kind]
    whole = live(manifest)
    assert up_to_date(manifest, seen_by_the_applier(whole)), "nothing changed: the pass applies nothing"
    kept = owned_projection(copy.deepcopy(whole))
    assert kept is not None
    assert "notes.example.com/blob" not in json.dumps(kept)
    assert len(json.dumps(kept)) < 1.5 * len(json.dumps(manifest)) + 1024, (
        "what the operator wrote, little more"
    )
    if kind == "Deployment":
        assert reduce_deployment(kept) == reduce_deployment(whole)


def _take(obj: Obj, path: list[str], manager: str) -> None:
    """Moves a field from the operator's managedFields to `manager`'s, as an update by hand does."""
    fields = obj["metadata"]["managedFields"][0]["fieldsV1"]
    for step in path[:-1]:
        fields = fields[step]
    del fields[path[-1]]
    taken: Obj = {}
    node = taken
    for step in path[:-1]:
        node = node.setdefault(step, {})
    node[path[-1]] = {}
    obj["metadata"]["managedFields"].append(entry(manager, taken))


CONTAINER = 'k:{"name":"model-server"}'


def test_a_hand_edit_of_what_the_operator_applied_is_applied_again() -> None:
    deployment, service = manifests()["Deployment"], manifests()["Service"]

    edited = live(deployment)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:1"
    _take(edited, ["f:spec", "f:template", "f:spec", "f:containers", CONTAINER, "f:image"], "kubectl-edit")
    assert not up_to_date(deployment, seen_by_the_applier(edited)), "an image changed by hand"

    scaled = live(deployment)
    scaled["spec"]["replicas"] = 5
    _take(scaled, ["f:spec", "f:replicas"], "kubectl-scale")
    assert not up_to_date(deployment, seen_by_the_applier(scaled)), "replicas changed by hand"

    widened = live(service)
    widened["spec"]["selector"]["app"] = "other"
    _take(widened, ["f:spec", "f:selector"], "kubectl-patch")
    assert not up_to_date(service, seen_by_the_applier(widened)), "a key added to the selector"

    # A sidecar another controller added is none of the operator's fields: nothing to apply.
    injected = live(deployment)
    injected["spec"]["template"]["spec"]["containers"].append({"name": "proxy", "image": "mesh/proxy:1"})
    assert up_to_date(deployment, seen_by_the_applier(injected))


def test_objects_no_model_deployment_controls_are_not_kept() -> None:
    def labelled(name: str, refs: list[Obj]) -> Obj:
        made = obj(name, owner="sentiment")
        made["metadata"]["ownerReferences"] = refs
        return made

    mine = labelled("sentiment", [controller("sentiment", uid="uid-1")])
    foreign = [
        labelled("by-hand", []),
        labelled("a-replicaset-s", [controller("x", kind="ReplicaSet")]),
        labelled("not-controller", [{**controller("sentiment", uid="uid-1"), "controller": False}]),
        labelled("other-group", [{**controller("sentiment"), "apiVersion": "example.com/v1"}]),
    ]
    orphaned = copy.deepcopy(mine)
    orphaned["metadata"].update(ownerReferences=[], resourceVersion="9")

    class Client(ScriptedClient):
        def list(self, resource: Any, **_: Any) -> Listed:
            kind = resource._api_info.resource.kind
            return Listed([mine, *foreign] if kind == "Service" else [], "5")

        def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
            kind = resource._api_info.resource.kind
            events = [("ADDED", labelled("later", []))] + ([("MODIFIED", orphaned)] if self.gate else [])
            self.watches = [(events if kind == "Service" else [], None)]
            return super().watch(resource, **_)

    woken: list[tuple[str, str]] = []

    async def scenario() -> tuple[list[str], list[str]]:
        client = Client(lists=[], watches=[])
        cache = OwnedCache(cast(AsyncClient, client), wake=woken.append)
        cache.start()
        try:
            first = [o["metadata"]["name"] for o in await cache.owned(OWNER)]
            await cache.stop()
            client.gate = asyncio.Event()
            client.gate.set()
            cache.start()
            await settle(lambda: bool(woken))
            return first, [o["metadata"]["name"] for o in await cache.owned(OWNER)]
        finally:
            await cache.stop()

    first, after = asyncio.run(scenario())
    assert first == ["sentiment"], "only the object a ModelDeployment controls"
    assert after == [], "an object whose controller reference went is forgotten"
    assert woken == [("ml", "sentiment")], "and its owner woken, as for a deletion"


class Streamed:
    """A list whose items are made as they are read (each one as large as the test wants), so what
    stays in memory is what the cache keeps."""

    def __init__(self, make: Callable[[int], Obj], indexes: range) -> None:
        self.make, self.indexes, self.resourceVersion = make, indexes, "1"

    async def __aiter__(self) -> AsyncIterator[Obj]:
        for index in self.indexes:
            yield self.make(index)


class Flood:
    """1,000 objects of one kind: half in the first list, half as watch events."""

    def __init__(self, kind: str, make: Callable[[int], Obj], count: int = 1000) -> None:
        self.kind, self.make, self.count, self.delivered = kind, make, count, 0

    def _made(self, index: int) -> Obj:
        self.delivered += 1
        return self.make(index)

    def list(self, resource: Any, **_: Any) -> Streamed:
        mine = resource._api_info.resource.kind == self.kind
        return Streamed(self._made, range(self.count // 2) if mine else range(0))

    def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
        mine = resource._api_info.resource.kind == self.kind

        async def stream() -> AsyncIterator[Any]:
            for index in range(self.count // 2, self.count) if mine else ():
                yield "ADDED", self._made(index)
            await asyncio.Event().wait()

        return stream()


def retained_per_object(kind: str, make: Callable[[int], Obj]) -> tuple[float, int]:
    """Memory the cache holds after 1,000 objects arrived, per object (tracemalloc), and how many it
    keeps."""
    flood = Flood(kind, make)
    make(0)  # what the test itself builds once, before measuring

    async def scenario() -> tuple[int, int]:
        cache = OwnedCache(cast(AsyncClient, flood))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        cache.start()
        try:
            await settle(lambda: flood.delivered == flood.count, within=60)
            await asyncio.sleep(0.05)
            gc.collect()
            kept = sum(len(i.store) for i in cache._all())
            return tracemalloc.get_traced_memory()[0] - before, kept
        finally:
            await cache.stop()

    tracemalloc.start()
    try:
        grown, kept = asyncio.run(scenario())
    finally:
        tracemalloc.stop()
    return grown / flood.count, kept


@functools.cache
def _deployment_json() -> str:
    return json.dumps(live(_manifests()["Deployment"], blob="-"))


def decoded_deployment(index: int) -> Obj:
    """A Deployment as a watch event decodes it (its own strings), with its own 256 KiB annotation."""
    made: Obj = json.loads(_deployment_json())
    made["metadata"].update(name=f"d{index}")
    made["metadata"]["annotations"]["notes.example.com/blob"] = f"{index:08d}" * (BIG // 8)
    return made


def _foreign_deployment(index: int) -> Obj:
    made = decoded_deployment(index)
    made["metadata"].update(namespace=f"tenant-{index % 7}", ownerReferences=[])
    return made


def test_a_thousand_large_objects_no_model_deployment_controls_take_no_memory() -> None:
    """Anyone who may create Deployments may label them managed-by=aliasroll, in any namespace."""
    per_object, kept = retained_per_object("Deployment", _foreign_deployment)
    assert kept == 0
    assert per_object < 512, f"{per_object:.0f} bytes kept per foreign object of {BIG // 1024} KiB"


def _controlled_deployment(index: int) -> Obj:
    return decoded_deployment(index)


def test_what_is_kept_of_an_owned_object_is_bounded_by_what_the_operator_wrote() -> None:
    per_object, kept = retained_per_object("Deployment", _controlled_deployment)
    assert kept == 1000
    assert per_object < 10 * 1024, (
        f"{per_object:.0f} bytes kept per Deployment with a {BIG // 1024} KiB annotation"
    )


def _tenant_pod(index: int) -> Obj:
    made = pod(f"p{index}", owner="sentiment")
    made["metadata"]["annotations"] = {"notes.example.com/blob": f"{index:08d}" * (BIG // 8)}
    made["spec"] = {"containers": [{"name": "model-server", "image": "x", "args": ["y" * 4096]}]}
    made["status"] = {
        "podIP": "10.1.0.7",
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [
            {"name": "model-server", "ready": True, "restartCount": 0, "state": {"running": {}}}
        ],
    }
    if index % 2:
        made["metadata"]["ownerReferences"] = []  # made by hand: no ReplicaSet's
    return made


def test_what_is_kept_of_a_pod_is_bounded() -> None:
    per_object, kept = retained_per_object("Pod", _tenant_pod)
    assert kept == 500, "the pods no ReplicaSet controls are not kept"
    assert per_object < 2 * 1024, f"{per_object:.0f} bytes kept per pod with a {BIG // 1024} KiB annotation"


def test_the_pod_projection_keeps_what_passes_read() -> None:
    from aliasroll.controller.analyzer import container_identity
    from aliasroll.kube.observe import PodStates

    failing = pod("sentiment-production-x", owner="sentiment")
    failing["metadata"]["labels"].update(
        {"aliasroll.io/track": "production", "aliasroll.io/model-version": "4"}
    )
    failing["spec"] = {"containers": [{"name": "model-server", "image": "x"}]}
    failing["status"] = {
        "podIP": "10.1.0.7",
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}],
        "containerStatuses": [
            {
                "name": "model-server",
                "ready": False,
                "restartCount": 3,
                "containerID": "containerd://abc",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {
                    "terminated": {"exitCode": 1, "reason": "Error", "message": "cannot install x"}
                },
            }
        ],
    }
    kept = pod_projection(copy.deepcopy(failing))
    assert kept is not None
    assert PodStates.of([kept]) == PodStates.of([failing])
    assert container_identity(kept["status"]) == container_identity(failing["status"])
    ready = copy.deepcopy(failing)
    ready["status"]["conditions"][0]["status"] = "True"
    assert PodStates.of([pod_projection(copy.deepcopy(ready)) or {}]) == PodStates.of([ready])


def test_the_pod_projection_keeps_the_serving_containers_named_ports() -> None:
    """The canary analysis reads /metrics on the port the pod declares as admin (controller/analyzer.py)."""
    from aliasroll.controller.analyzer import metrics_port

    made = pod("sentiment-canary-x", owner="sentiment")
    made["spec"] = {
        "containers": [
            {"name": "istio-proxy", "ports": [{"name": "admin", "containerPort": 15000}]},
            {
                "name": "model-server",
                "image": "x",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "admin", "containerPort": 9090, "protocol": "TCP"},
                    {"name": "debug", "containerPort": 5678, "protocol": "TCP"},
                ],
            },
        ]
    }
    kept = pod_projection(copy.deepcopy(made))
    assert kept is not None
    assert kept["spec"] == {
        "containers": [
            {
                "name": "model-server",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
            }
        ]
    }
    assert metrics_port(kept, default=1) == metrics_port(made, default=1) == 9090
