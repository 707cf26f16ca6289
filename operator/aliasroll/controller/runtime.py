"""The operator's runtime (`Runtime`, kept in Kopf's memo): what lives for the operator's lifetime,
wired once at start and closed at the end: the fence and the fenced clients, the watch-fed caches,
the registry poller, the event recorder, the tag writer, the reconciler and its scheduler, leader
election, the operator's own listeners (metrics, registry webhooks) and the resync.

Owned objects and serving pods are not watched through Kopf: kube.cache keeps one list+watch per
kind, read by every pass, and wakes an owner when its objects change.

The watch alone can miss a deletion (Kopf re-lists after a lost connection and reports what exists,
not what went away), so a periodic resync lists the resources and brings the workers in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from lightkube import ALL_NS

from aliasroll import metrics
from aliasroll.backoff import Backoff
from aliasroll.config import OperatorConfig
from aliasroll.controller.leadership import elector_for
from aliasroll.controller.reconciler import PassResult, Reconciler
from aliasroll.controller.scheduler import POD_SETTLE, Scheduler
from aliasroll.controller.tag_writer import DeferredTags
from aliasroll.controller.write_fence import Fence, FencedClient, FencedRegistry
from aliasroll.http import (
    Listener,
    ReceiverLimits,
    ServerTLS,
    ThreadedListener,
    metrics_app,
    on_this_loop,
    parse_listen,
    webhook_app,
)
from aliasroll.kube.cache import OwnedCache, PooledClient
from aliasroll.kube.credentials import SecretCache
from aliasroll.kube.events import EventRecorder
from aliasroll.kube.resources import ModelDeployment
from aliasroll.labels import MANAGER
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.client import RegistryClient, configure_http
from aliasroll.registry.poller import Wake
from aliasroll.registry.scoped import ScopedPoller
from aliasroll.webhooks import WebhookConfigError, WebhookReceiver, load_registries

log = logging.getLogger(__name__)


# A replica that does not lead runs no pass: its workers wait until leadership wakes them all.
STANDBY = PassResult(next_in=None)
# A pass the fence refused while this replica still leads (a renewal running late closed it for a
# moment, without a step-down, so no new leadership will wake the resource): it comes again soon.
FENCE_FLICKER = PassResult(next_in=2.0)


class ScopedFencedRegistry(ScopedPoller, FencedRegistry):
    """The fenced poller, which a registry's webhook wakes on that registry's endpoints only."""


class Runtime:
    """What lives for the operator's lifetime; kept in Kopf's memo."""

    def __init__(self, config: OperatorConfig, *, namespaces: Sequence[str] = ()) -> None:
        self.config = config
        self.namespaces = tuple(namespaces)  # empty: every namespace
        configure_http(timeout_seconds=config.registry_timeout_seconds)
        # Leader election (docs/operations/high-availability.md): passes run only through the fence, which
        # is up while this process leads (always, when leader election is off); every write of a
        # pass checks it too.
        self.fence = Fence()
        self.client = FencedClient(fence=self.fence, field_manager=MANAGER)
        self._build_watches()
        self.registry = self._build_registry(config)
        log.info("tenant URLs (registries, Prometheus): %s", config.destinations.describe())
        self.events = self._build_events(config)
        self.tags = DeferredTags(self.registry, max_delay=config.records_max_delay_seconds)
        self.reconciler = self._build_reconciler(config)
        self.scheduler = self._build_scheduler(config)
        # After a failed list, retry sooner than the period, but never more often than every 5 s.
        self._resync_backoff = Backoff(base=min(5.0, config.resync_seconds), cap=config.resync_seconds)
        self._resync_task: asyncio.Task[None] | None = None
        self.elector = elector_for(
            config,
            fence=self.fence,
            on_leading=self._lead,
            on_stepped_down=self._forget_passes,
            field_manager=MANAGER,
        )
        self._passed: set[str] = set()  # uids this process ran passes for since it last led
        self._last_pass: dict[str, float] = {}  # uid -> when its last pass began (monotonic)
        self.listeners = self._listeners(config)
        metrics.QUEUE_DEPTH.set_function(lambda: self.scheduler.pending)

    def _build_watches(self) -> None:
        """The watch-fed caches (owned objects and serving pods; Secrets) and their clients."""
        # Watches hold a connection each for as long as they run: clients of their own, so they never
        # take the connections passes write through. (They only read: no fence.) The owned kinds'
        # watches have a pool of exactly as many connections as they are; how many Secrets are named
        # is up to the tenants, so their watches are bounded and pooled apart: a watch of the owned
        # kinds that reconnects never waits behind them.
        self.watch_client = PooledClient(connections=OwnedCache.connections(self.namespaces))
        self.objects = OwnedCache(
            self.watch_client,
            namespaces=self.namespaces,
            wake=lambda owner: self.scheduler.child_changed(owner),
            wake_for_pod=lambda owner: self.scheduler.child_changed(owner, settle=POD_SETTLE),
        )
        self.secret_client = PooledClient(connections=SecretCache.CONNECTIONS)
        self.secrets = SecretCache(self.secret_client)

    def _build_registry(self, config: OperatorConfig) -> ScopedFencedRegistry:
        """The one registry poller every pass reads and writes through, behind the fence."""
        return ScopedFencedRegistry(
            RegistryClient(
                timeout_seconds=config.registry_timeout_seconds,
                max_answer_bytes=config.registry_max_answer_bytes,
                destinations=config.destinations,
            ),
            fence=self.fence,
            sweep_threshold=config.registry_sweep_threshold,
            backoff=Backoff(cap=config.registry_max_backoff_seconds),
            concurrency_per_registry=config.registry_concurrency,
            # One call's deadline, plus a margin for the thread to hand its answer over: a pass
            # waits no longer than that for a registry, however busy or silent it is.
            answer_timeout=config.registry_timeout_seconds + 1.0,
            destinations=config.destinations,
        )

    def _build_events(self, config: OperatorConfig) -> EventRecorder:
        # Events go through one writer whatever task posts them (a pass started by the watch, the
        # resync or a new leader); only while leading, through the fenced client.
        return EventRecorder(
            self.client,
            component=MANAGER,
            instance=config.pod_name or socket.gethostname(),
            may_write=lambda: self.fence.open,
        )

    def _build_reconciler(self, config: OperatorConfig) -> Reconciler:
        return Reconciler(
            client=self.client,
            tags=self.tags,
            objects=self.objects,
            secrets=self.secrets,
            registry=self.registry,
            events=self.events,
            defaults=WorkloadDefaults(
                image=config.serving_image,
                progress_deadline_seconds=config.progress_deadline_seconds,
                dependencies=config.dependencies,
            ),
            allowed=config.allowed,
            destinations=config.destinations,
        )

    def _build_scheduler(self, config: OperatorConfig) -> Scheduler:
        return Scheduler(
            reconcile=self._reconcile,
            forget=self._forget,
            backoff=Backoff(base=config.retry_base_seconds, cap=config.retry_max_seconds),
            max_concurrent=config.max_concurrent_passes,
            settle=config.child_settle_seconds,
        )

    def _listeners(self, config: OperatorConfig) -> list[Listener | ThreadedListener]:
        listeners: list[Listener | ThreadedListener] = []
        if config.metrics_listen:
            host, port = parse_listen("ALIASROLL_METRICS_LISTEN", config.metrics_listen)
            listeners.append(Listener("metrics", metrics_app(), host, port))
        try:
            registries = load_registries(
                registries_file=config.webhook_registries_file,
                secret=config.webhook_secret,
                tracking_uri=config.webhook_tracking_uri,
            )
        except WebhookConfigError as error:
            raise SystemExit(str(error)) from None
        if config.webhook_listen and registries:
            host, port = parse_listen("ALIASROLL_WEBHOOK_LISTEN", config.webhook_listen)
            receiver = WebhookReceiver(
                registries=registries,
                # Checked on the receiver's own loop; the wake runs on this one, the poller's.
                refresh=on_this_loop(self.registry.refresh_registry),
                tolerance=config.webhook_tolerance_seconds,
            )
            limits = ReceiverLimits(
                per_source=config.webhook_rate_per_source, total=config.webhook_rate_total
            )
            app = webhook_app(receiver, standby=lambda: not self.leading, limits=limits)
            tls = self._webhook_tls(config)
            listeners.append(ThreadedListener("registry webhooks", app, host, port, tls=tls))
            log.info(
                "registry webhooks from %s",
                ", ".join(f"{registry.name} at {registry.path}" for registry in registries),
            )
        elif config.webhook_listen:
            log.warning(
                "ALIASROLL_WEBHOOK_LISTEN is set but no registry is (ALIASROLL_WEBHOOK_REGISTRIES): "
                "webhooks are not received (unsigned deliveries are never trusted); polling alone"
            )
        return listeners

    @staticmethod
    def _webhook_tls(config: OperatorConfig) -> ServerTLS | None:
        cert, key = config.webhook_tls_cert, config.webhook_tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise SystemExit("ALIASROLL_WEBHOOK_TLS_CERT and ALIASROLL_WEBHOOK_TLS_KEY go together: set both")
        try:
            return ServerTLS(cert, key)
        except (OSError, ValueError) as error:
            raise SystemExit(f"ALIASROLL_WEBHOOK_TLS_CERT/_KEY: {error}") from None

    async def start(self) -> None:
        for listener in self.listeners:
            await listener.start()
        self.objects.start()
        self.events.start()
        self._resync_task = asyncio.create_task(self._resync_forever(), name="resync")
        if self.elector is None:
            self.fence.raise_()
            metrics.LEADER.set(1)
        else:
            self.elector.start()

    @property
    def leading(self) -> bool:
        return self.fence.open  # bound to the elector's lease, on the clock

    async def _lead(self) -> None:
        """Just became leader: every resource gets a pass, as at start (the watches stayed warm,
        but no pass ran, and the last leader may have left anything half done)."""
        failures = 0
        while True:
            try:
                listed = await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                log.warning("leading: listing ModelDeployments failed (attempt %d): %r", failures, error)
                await asyncio.sleep(self._resync_backoff.delay(failures))
                continue
            for body in listed:
                self.scheduler.wake(str((body.get("metadata") or {}).get("uid") or ""))
            log.info("leading: %d resource(s) woken", len(listed))
            return

    def _forget(self, uid: str) -> None:
        self._passed.discard(uid)
        self._last_pass.pop(uid, None)
        self.reconciler.forget(uid)

    def _forget_passes(self) -> None:
        """Leadership ended: what the passes remembered (the status last written, the registry
        subscriptions, canary measurements) goes, as in a fresh process; another leader writes
        meanwhile, and the registry is not polled for a standby."""
        for uid in self._passed:
            self.reconciler.forget(uid)
        self._passed.clear()
        self.tags.stepped_down()  # the next leader plans from status what is still to be written

    async def _reconcile(self, body: Mapping[str, Any], wake: Wake) -> PassResult:
        if not self.leading:
            return FENCE_FLICKER if self.fence.raised else STANDBY
        uid = str((body.get("metadata") or {}).get("uid") or "")
        self._passed.add(uid)
        began = time.perf_counter()
        if (last := self._last_pass.get(uid)) is not None:
            metrics.PASS_INTERVAL_SECONDS.observe(time.monotonic() - last)
        self._last_pass[uid] = time.monotonic()
        outcome = "failed"  # also when the pass raises (the scheduler logs and retries it)
        try:
            fenced = await self.fence.run(self.reconciler.reconcile(body, wake=wake))
            if fenced is None:  # leadership ended during the pass, which was cancelled
                outcome = "stepped_down"
                return FENCE_FLICKER if self.fence.raised else STANDBY
            result = fenced
            outcome = "gone" if result.gone else "failed" if result.failed is not None else "ok"
        finally:
            metrics.PASSES.labels(outcome).inc()
            metrics.PASS_SECONDS.labels(outcome).observe(time.perf_counter() - began)
        if outcome == "ok":
            changed_at = self.registry.take_change(str((body.get("metadata") or {}).get("uid") or ""))
            if changed_at is not None:
                metrics.ALIAS_MOVE_APPLIED_SECONDS.observe(max(0.0, time.time() - changed_at))
        return result

    async def resync(self) -> list[Mapping[str, Any]]:
        """Lists the watched ModelDeployments and stops or starts workers the watch left behind."""
        began = self.scheduler.position
        listed: list[Mapping[str, Any]] = []
        for namespace in self.namespaces or (ALL_NS,):
            async for item in self.client.list(ModelDeployment, namespace=namespace):
                # A generic resource is the JSON object itself (a dict), as Kopf's bodies are.
                listed.append(dict(cast(Mapping[str, Any], item)))
        plan = await self.scheduler.resync(listed, list_began=began)
        log.debug("resync: %d listed, %d stopped, %d started", len(listed), len(plan.stop), len(plan.start))
        return listed

    async def _resync_forever(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(
                self._resync_backoff.delay(failures) if failures else self.config.resync_seconds
            )
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # never end quietly: the next resync may well succeed
                failures += 1
                log.warning("resync: listing ModelDeployments failed (attempt %d): %r", failures, error)
            else:
                failures = 0

    async def close(self) -> None:
        self.fence.close()
        metrics.LEADER.set(0)
        for listener in self.listeners:
            await listener.stop()
        if self._resync_task is not None:
            self._resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync_task
        await self.scheduler.stop()
        await self.tags.stop()
        await self.events.stop()
        await self.objects.stop()
        await self.secrets.stop()
        if self.elector is not None:  # passes stopped: release the lease, the other leads at once
            await self.elector.close()
        await self.registry.close()
        await self.client.close()
        await self.watch_client.close()
        await self.secret_client.close()
