"""The watch-fed cache: its index, a relist after 410 Gone, a watch resumed after a dropped
connection, and passes held back until the first list is in.

The client here is scripted (lists and watch streams as the API server answers them); that the
cache works against the real API server is proven in tests/e2e/test_watch_cache_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx2
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from aliasroll.errors import KubernetesApplyFailed, KubernetesUnavailable
from aliasroll.kube.cache import Informer, OwnedCache, Store, owner_index
from aliasroll.kube.credentials import SecretCache
from aliasroll.planning.workloads import LABEL_OWNER
from aliasroll.spec import ResourceRef

Obj = dict[str, Any]


def obj(name: str, *, owner: str | None = "m", version: str = "1", namespace: str = "ml") -> Obj:
    labels = {LABEL_OWNER: owner} if owner else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "resourceVersion": version},
    }


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


async def settle(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
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
    service, pod = obj("m"), {**obj("m-production-x1"), "apiVersion": "v1", "kind": "Pod"}
    later = obj("m-canary")

    class Client(ScriptedClient):
        def list(self, resource: Any, **_: Any) -> Listed:
            kind = resource._api_info.resource.kind
            return Listed({"Service": [service], "Pod": [pod]}.get(kind, []), "5")

        def watch(self, resource: Any, **_: Any) -> AsyncIterator[Any]:
            kind = resource._api_info.resource.kind
            events = {"Service": [("ADDED", later)], "Pod": [("MODIFIED", {**pod, "status": {}})]}
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
        kept = [informer.store.get("ml", "creds") for informer in secrets._informers.values()]
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
