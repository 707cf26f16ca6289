"""Kopf wiring: watch events in, wakes out. No handler decides anything.

Only raw watch handlers (`kopf.on.event`) are used: they need no finalizer and store nothing on the
resource, so the operator never writes a ModelDeployment's metadata or spec (GitOps tools see no
drift), and deleting a resource never waits on the operator. Children are removed by the garbage
collector through their ownerReferences.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from lightkube import AsyncClient

from aliasroll import __version__
from aliasroll.config import OperatorConfig
from aliasroll.controller.reconciler import Reconciler, Wake
from aliasroll.controller.scheduler import Scheduler
from aliasroll.planning.state import EventRecord
from aliasroll.planning.workloads import LABEL_MANAGED_BY, LABEL_OWNER, MANAGER, WorkloadDefaults
from aliasroll.registry.client import RegistryClient, configure_http
from aliasroll.registry.poller import RegistryPoller
from aliasroll.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


class KopfEvents:
    """Posts Kubernetes events through Kopf's queue (batched, retried, never blocking a pass)."""

    def post(self, body: Mapping[str, Any], event: EventRecord) -> None:
        # Kopf only reads apiVersion, kind and metadata from the body; a plain mapping does.
        kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)


class Runtime:
    """What lives for the operator's lifetime; kept in Kopf's memo."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        configure_http(timeout_seconds=config.registry_timeout_seconds)
        self.client = AsyncClient(field_manager=MANAGER)
        self.registry = RegistryPoller(
            RegistryClient(),
            sweep_threshold=config.registry_sweep_threshold,
            max_backoff=config.registry_max_backoff_seconds,
        )
        self.reconciler = Reconciler(
            client=self.client,
            registry=self.registry,
            events=KopfEvents(),
            defaults=WorkloadDefaults(
                image=config.serving_image, progress_deadline_seconds=config.progress_deadline_seconds
            ),
        )
        self.scheduler = Scheduler(
            reconcile=self._reconcile,
            forget=self.reconciler.forget,
            retry_base=config.retry_base_seconds,
            retry_max=config.retry_max_seconds,
        )

    async def _reconcile(self, body: Mapping[str, Any], wake: Wake) -> Any:
        return await self.reconciler.reconcile(body, wake=wake)

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.registry.close()
        await self.client.close()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.reporting_component = MANAGER
    settings.posting.reporting_instance = __version__
    settings.peering.standalone = True  # one replica (Recreate strategy); see README
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.runtime = Runtime(OperatorConfig.from_env())
    log.info("aliasroll %s started", __version__)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(
    *, type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    runtime: Runtime = memo.runtime
    key = (namespace or "", name)
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        await runtime.scheduler.remove(key)
        return
    runtime.scheduler.update(key, dict(body))


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGER})
@kopf.on.event("", "v1", "services", labels={LABEL_MANAGED_BY: MANAGER})
async def owned_object_event(*, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    # Rollout progress and hand edits (drift) of owned objects: the owner's next pass looks again.
    owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_OWNER)
    if owner:
        memo.runtime.scheduler.wake((namespace or "", owner))
