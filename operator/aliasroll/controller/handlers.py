"""The Kopf handlers: watch events in, wakes out. No handler decides anything.

Only raw watch handlers (`kopf.on.event`) are used: they need no finalizer and store nothing on the
resource, so the operator never writes a ModelDeployment's metadata or spec (GitOps tools see no
drift), and deleting a resource never waits on the operator. Children are removed by the garbage
collector through their ownerReferences.

What they feed (the scheduler, the reconciler, the caches, leadership, the resync) is wired once, at
startup, by the `Runtime` (runtime.py).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from aliasroll import __version__
from aliasroll.config import OperatorConfig
from aliasroll.controller.runtime import Runtime
from aliasroll.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf diffs every event against the last handled state (a deep copy of the body each time)
    for its change handlers. This operator has none: an event only wakes the level-based pass, which
    reads the whole body. So nothing is built, kept or compared."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Events are aliasroll's own (kube.events): Kopf posts none, not even its log lines.
    settings.posting.enabled = False
    # No Kopf peering (it pauses handlers but does not fence writes): replicas elect a leader on a
    # Lease instead (leadership.py; docs/operations/high-availability.md).
    settings.peering.standalone = True
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # __main__ puts the namespaces of --namespace in the memo; none means every namespace.
    memo.runtime = Runtime(OperatorConfig.from_env(), namespaces=memo.get("watched_namespaces", ()))
    await memo.runtime.start()
    log.info("aliasroll %s started", __version__)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(*, type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if type == "DELETED":
        if runtime.leading:
            await runtime.reconciler.close_spans(dict(body), why="ModelDeployment deleted")
        await runtime.scheduler.remove(str(body.get("metadata", {}).get("uid") or ""))
        return
    await runtime.scheduler.update(dict(body))  # being deleted (deletionTimestamp) stops it too
