"""Long-lived connections: the operator's watches of what it owns never wait behind the Secret
watches tenants cause, and those are bounded however many Secrets tenants name.

Against a fake API server on 127.0.0.1 that speaks HTTP/1.1 as the real one does for lists and
watches (a watch holds its connection until the server ends it, as it does after timeoutSeconds),
driven through the operator's own wiring (controller.runtime.Runtime) and lightkube clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from lightkube import KubeConfig
from lightkube.resources.core_v1 import Secret

from aliasroll.config import OperatorConfig
from aliasroll.controller.runtime import Runtime
from aliasroll.errors import CredentialsNotFound
from aliasroll.kube.cache import PooledClient
from aliasroll.kube.credentials import SECRET_WATCHES, SecretCache

OWNED = ("deployments", "services", "poddisruptionbudgets", "httproutes", "pods")


class FakeApiServer:
    """Lists answer at once (nothing listed); watches stay open until the client goes or the test
    ends them (`end_watches`), then the connection serves the next request."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()  # watches open now, by resource (plural)
        self.most_open: Counter[str] = Counter()
        self.watches: Counter[str] = Counter()  # watch requests, by resource
        self._end: dict[str, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeApiServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for event in self._end.values():
            event.set()

    def end_watches(self, resource: str) -> None:
        """As the API server does after a watch's timeoutSeconds: the client watches again."""
        self._end.pop(resource, asyncio.Event()).set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                url = urllib.parse.urlsplit(target)
                resource = url.path.rstrip("/").rsplit("/", 1)[-1]
                if urllib.parse.parse_qs(url.query).get("watch") == ["true"]:
                    if not await self._watch(resource, reader, writer):
                        return
                    continue
                body = json.dumps(
                    {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _watch(self, resource: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """True when the server ended the watch (the connection goes on), False when the client went."""
        end = self._end.setdefault(resource, asyncio.Event())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        self.watches[resource] += 1
        self.open[resource] += 1
        self.most_open[resource] = max(self.most_open[resource], self.open[resource])
        gone, ended = asyncio.ensure_future(reader.read(1)), asyncio.ensure_future(end.wait())
        try:
            await asyncio.wait({gone, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.open[resource] -= 1
            for waiting in (gone, ended):
                waiting.cancel()
            await asyncio.gather(gone, ended, return_exceptions=True)  # the reader is free again
        if gone.done() and not gone.cancelled():
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "operator", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "operator"}}],
                "current-context": "fake",
            }
        )
    )
    return path


async def until(check: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.01)


def test_secret_names_tenants_choose_never_starve_the_owned_kinds_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 ModelDeployments each name a Secret that does not exist (one list+watch each, before):
    the Secret watches stay within their bound, every resource is answered at once, and the watches
    of the owned kinds, which the server ends and the operator opens again every few minutes, get a
    connection at once."""

    async def scenario() -> tuple[FakeApiServer, list[Any], int]:
        async with FakeApiServer() as server:
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, server.url)))
            runtime = Runtime(OperatorConfig())
            runtime.objects.start()
            try:
                await until(lambda: all(server.open[r] for r in OWNED), within=5, what="owned kinds watched")
                answers = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            runtime.secrets.credentials(
                                uid=f"u{i}",
                                namespace=f"tenant-{i % 3}",
                                secret_name=f"s{i}",
                                wake=lambda: None,
                            )
                            for i in range(200)
                        ),
                        return_exceptions=True,
                    ),
                    timeout=8,
                )
                await until(lambda: server.open["secrets"] >= SECRET_WATCHES, within=5, what="Secret watches")
                for resource in OWNED:
                    server.end_watches(resource)
                await until(
                    lambda: all(server.watches[r] >= 2 and server.open[r] for r in OWNED),
                    within=3,
                    what="every owned kind watched again",
                )
                return server, answers, runtime.secrets.watched
            finally:
                await runtime.objects.stop()
                await runtime.secrets.stop()
                for client in (runtime.client, runtime.watch_client, runtime.secret_client):
                    await client.close()

    server, answers, watched = asyncio.run(scenario())
    assert server.most_open["secrets"] <= SECRET_WATCHES, (
        f"{server.most_open['secrets']} Secret watches at once"
    )
    assert watched <= SECRET_WATCHES
    not_found = [a for a in answers if isinstance(a, CredentialsNotFound) and "does not exist" in a.message]
    assert len(not_found) == 200, {type(a).__name__: str(a) for a in answers if a not in not_found}


def test_a_pool_holds_no_more_connections_than_it_is_given(tmp_path: Path) -> None:
    """What bounds the connections is the pool itself: a third watch on a client of two waits (and
    fails), it never opens a third connection."""

    async def scenario() -> FakeApiServer:
        async with FakeApiServer() as server:
            client = PooledClient(
                connections=2,
                config=KubeConfig.from_file(kubeconfig(tmp_path, server.url)),
                timeout=httpx2.Timeout(10, pool=0.5),
            )

            async def watch(name: str) -> None:
                stream: AsyncIterable[Any] = client.watch(
                    Secret, namespace="ml", fields={"metadata.name": name}
                )
                async for _ in stream:
                    pass

            held = [asyncio.create_task(watch(name)) for name in ("a", "b")]
            try:
                await until(lambda: server.open["secrets"] == 2, within=5, what="two watches")
                with pytest.raises(httpx2.PoolTimeout):
                    await watch("c")
                return server
            finally:
                for task in held:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await client.close()

    server = asyncio.run(scenario())
    assert server.most_open["secrets"] == 2


def test_each_cache_gets_a_pool_of_its_own_sized_for_its_watches() -> None:
    from aliasroll.kube.cache import OwnedCache

    assert OwnedCache.connections(()) == 7, "6 cluster-wide watches, and one to spare"
    assert OwnedCache.connections(["a", "b", "c"]) == 19
    assert SecretCache.CONNECTIONS > SECRET_WATCHES, "one-shot reads never wait behind the watches"
