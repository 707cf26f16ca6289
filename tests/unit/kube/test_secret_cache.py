"""The credentials Secrets: how many are watched is bounded whatever tenants name, the watches are
shared fairly between namespaces, a Secret that does not exist is not watched for ever, and the
Secrets that are not watched are read when a pass needs them.

The client is a fake API server that counts the watches open at once; that the operator's Secret
watches never hold a connection the owned kinds' watches need is in test_watch_pools.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx2
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from aliasroll.errors import CredentialsNotFound
from aliasroll.kube.credentials import MAX_VALUE_CHARS, SecretCache
from aliasroll.registry.types import Credentials

Obj = dict[str, Any]


def secret(namespace: str, name: str, token: str = "t", version: str = "1") -> Obj:
    data = {"MLFLOW_TRACKING_TOKEN": base64.b64encode(token.encode()).decode(), "ca.crt": "eA=="}
    meta = {"name": name, "namespace": namespace, "resourceVersion": version}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


class Listed:
    def __init__(self, items: list[Obj]) -> None:
        self.items, self.resourceVersion = items, "1"

    async def __aiter__(self) -> AsyncIterator[Obj]:
        for item in self.items:
            yield item


class SecretsApi:
    """Answers lists and watches of Secrets by name (field selector metadata.name), as the API server
    does; counts the watches open at once."""

    def __init__(self, secrets: list[Obj] = (), *, forbidden: bool = False) -> None:  # type: ignore[assignment]
        self.secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in secrets}
        self.forbidden = forbidden
        self.lists = 0
        self.open = 0
        self.most_open = 0
        self.events: dict[tuple[str, str], asyncio.Queue[tuple[str, Obj]]] = {}

    def put(self, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.secrets[key] = obj
        if (queue := self.events.get(key)) is not None:
            queue.put_nowait(("ADDED", obj))

    def list(self, resource: Any, *, namespace: str, fields: dict[str, str], **_: Any) -> Listed:
        self.lists += 1
        if self.forbidden:
            request = httpx2.Request("GET", "https://127.0.0.1:6443/api/v1/secrets")
            status = {"kind": "Status", "code": 403, "message": "secrets is forbidden"}
            raise ApiError(request=request, response=httpx2.Response(403, json=status, request=request))
        found = self.secrets.get((namespace, fields["metadata.name"]))
        return Listed([copy.deepcopy(found)] if found else [])

    def watch(self, resource: Any, *, namespace: str, fields: dict[str, str], **_: Any) -> AsyncIterator[Any]:
        queue = self.events.setdefault((namespace, fields["metadata.name"]), asyncio.Queue())

        async def stream() -> AsyncIterator[tuple[str, Obj]]:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                while True:
                    yield await queue.get()
            finally:
                self.open -= 1

        return stream()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(api: SecretsApi, **options: Any) -> SecretCache:
    return SecretCache(cast(AsyncClient, api), sync_wait=1.0, **options)


async def ask(
    secrets: SecretCache, uid: str, namespace: str, name: str, wake: Callable[[], None] = lambda: None
) -> Credentials | CredentialsNotFound:
    try:
        return await secrets.credentials(uid=uid, namespace=namespace, secret_name=name, wake=wake)
    except CredentialsNotFound as error:
        return error


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def test_two_hundred_secret_names_hold_no_more_watches_than_the_bound() -> None:
    """A tenant names 200 Secrets, half of which do not exist: 8 watches at most, fairly spread,
    and every resource still gets its answer."""
    names = [(f"team-{i % 4}", f"creds-{i}") for i in range(200)]
    api = SecretsApi([secret(ns, name, token=name) for ns, name in names[::2]])

    async def scenario() -> tuple[list[Any], list[Any], int, Counter[str], int]:
        secrets = cache(api, watches=8)
        first = await asyncio.gather(*(ask(secrets, f"u{i}", ns, name) for i, (ns, name) in enumerate(names)))
        await settled()
        lists = api.lists
        again = await asyncio.gather(*(ask(secrets, f"u{i}", ns, name) for i, (ns, name) in enumerate(names)))
        spread = Counter(e.key[0] for e in secrets._entries.values() if e.informer is not None)
        open_now = api.open
        await secrets.stop()
        return first, again, api.lists - lists, spread, open_now

    first, again, lists, spread, open_now = asyncio.run(scenario())
    assert api.most_open <= 8, f"{api.most_open} Secret watches open at once"
    assert open_now == 8
    assert spread == {"team-0": 2, "team-1": 2, "team-2": 2, "team-3": 2}, "shared between the namespaces"
    for answers in (first, again):
        for (_ns, name), answer in zip(names[::2], answers[::2], strict=True):
            assert isinstance(answer, Credentials)
            assert answer.token == name
        assert all(isinstance(answer, CredentialsNotFound) for answer in answers[1::2])
    assert lists == 0, "read again only once their last read is REREAD_SECONDS old"


def test_a_namespace_that_names_many_secrets_leaves_a_watch_for_another() -> None:
    greedy = [secret("greedy", f"creds-{i}") for i in range(20)]
    api = SecretsApi([*greedy, secret("quiet", "creds")])

    async def scenario() -> tuple[Counter[str], Any, Any]:
        secrets = cache(api, watches=8)
        for i, s in enumerate(greedy):
            await ask(secrets, f"g{i}", "greedy", s["metadata"]["name"])
        quiet = await ask(secrets, "q", "quiet", "creds")
        await settled()
        spread = Counter(e.key[0] for e in secrets._entries.values() if e.informer is not None)
        # The greedy Secret whose watch went to the quiet namespace is still answered (read).
        dropped = await ask(secrets, "g7", "greedy", "creds-7")
        await secrets.stop()
        return spread, quiet, dropped

    spread, quiet, dropped = asyncio.run(scenario())
    assert spread == {"greedy": 7, "quiet": 1}
    assert isinstance(quiet, Credentials)
    assert isinstance(dropped, Credentials)
    assert api.most_open <= 8


def test_a_secret_that_does_not_exist_is_watched_for_a_while_then_read() -> None:
    api, clock = SecretsApi(), Clock()
    woken: list[str] = []

    async def scenario() -> list[Any]:
        secrets = cache(api, missing_watch=600, reread=60, clock=clock)
        seen = [await ask(secrets, "u", "ml", "later", lambda: woken.append("u")), secrets.watched]
        clock.now += 599
        seen += [await ask(secrets, "u", "ml", "later"), secrets.watched]
        clock.now += 2
        seen += [await ask(secrets, "u", "ml", "later"), secrets.watched]
        await settled()
        seen.append(api.open)
        api.put(secret("ml", "later", token="finally"))  # nobody watches: nobody is woken
        clock.now += 30
        lists = api.lists
        seen += [await ask(secrets, "u", "ml", "later"), api.lists - lists]  # read 30 s ago: not again
        clock.now += 31
        seen += [await ask(secrets, "u", "ml", "later"), secrets.watched]  # read, found: watched again
        await secrets.stop()
        return seen

    seen = asyncio.run(scenario())
    missing, watched, *seen = seen
    assert isinstance(missing, CredentialsNotFound)
    assert "does not exist" in missing.message
    assert watched == 1, "watched at first: it is often created a moment later"
    still, watched, *seen = seen
    assert isinstance(still, CredentialsNotFound)
    assert watched == 1
    gone, watched, open_watches, *seen = seen
    assert isinstance(gone, CredentialsNotFound)
    assert (watched, open_watches) == (0, 0), "after MISSING_WATCH_SECONDS it holds no connection"
    assert woken == []
    not_yet, lists, found, watched = seen
    assert isinstance(not_yet, CredentialsNotFound)
    assert lists == 0
    assert isinstance(found, Credentials)
    assert found.token == "finally"
    assert watched == 1


def test_a_secret_created_while_it_is_watched_takes_effect_at_once() -> None:
    api = SecretsApi()
    woken: list[str] = []

    async def scenario() -> Any:
        secrets = cache(api)
        await ask(secrets, "u", "ml", "later", lambda: woken.append("u"))
        api.put(secret("ml", "later", token="now"))
        async with asyncio.timeout(5):
            while not woken:  # noqa: ASYNC110 - polls a plain condition of the code under test
                await asyncio.sleep(0.005)
        answer = await ask(secrets, "u", "ml", "later")
        await secrets.stop()
        return answer

    answer = asyncio.run(scenario())
    assert woken == ["u"]
    assert isinstance(answer, Credentials)
    assert answer.token == "now"


def test_a_change_a_read_finds_wakes_the_other_resources_that_name_the_secret() -> None:
    api, clock = SecretsApi([secret("ml", "shared", token="one")]), Clock()
    woken: list[str] = []

    async def scenario() -> Any:
        secrets = cache(api, watches=0, reread=60, clock=clock)  # no watches: every Secret is read
        await ask(secrets, "a", "ml", "shared", lambda: woken.append("a"))
        await ask(secrets, "b", "ml", "shared", lambda: woken.append("b"))
        api.put(secret("ml", "shared", token="two", version="2"))
        clock.now += 61
        answer = await ask(secrets, "a", "ml", "shared", lambda: woken.append("a"))
        await secrets.stop()
        return answer

    answer = asyncio.run(scenario())
    assert isinstance(answer, Credentials)
    assert answer.token == "two"
    assert api.lists == 2, "one read per REREAD_SECONDS, shared by the resources that name it"
    assert woken == ["b"], "the pass that read it has it already"


@pytest.mark.parametrize("watches", [8, 0])
def test_a_secret_the_operator_may_not_read_says_so(watches: int) -> None:
    api = SecretsApi(forbidden=True)

    async def scenario() -> Any:
        secrets = cache(api, watches=watches)
        answer = await ask(secrets, "u", "ml", "creds")
        await secrets.stop()
        return answer

    answer = asyncio.run(scenario())
    assert isinstance(answer, CredentialsNotFound)
    assert "RBAC" in answer.message


def test_a_value_longer_than_any_token_is_not_kept() -> None:
    huge = secret("ml", "huge", token="x" * MAX_VALUE_CHARS)

    async def scenario() -> tuple[Any, Any]:
        secrets = cache(SecretsApi([huge]))
        answer = await ask(secrets, "u", "ml", "huge")
        kept = next(iter(secrets._entries.values())).informer.store.get("ml", "huge")  # type: ignore[union-attr]
        await secrets.stop()
        return answer, kept

    answer, kept = asyncio.run(scenario())
    assert isinstance(answer, CredentialsNotFound)
    assert "longer than" in answer.message
    assert kept is not None
    assert kept["data"] == {}
