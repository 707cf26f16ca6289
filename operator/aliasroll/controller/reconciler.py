"""One reconcile pass: observe, plan, apply, write status once, post events.

All I/O of a pass lives here and in aliasroll.kube; every decision is in aliasroll.planning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lightkube import AsyncClient

from aliasroll import reasons
from aliasroll.controller.measuring import Analyzer
from aliasroll.controller.records import InlineTags, TagsState
from aliasroll.errors import (
    AliasrollError,
    CredentialsNotFound,
    InvalidSpec,
    KubernetesApplyFailed,
    KubernetesUnavailable,
    NameConflict,
)
from aliasroll.kube.applier import Applier
from aliasroll.kube.observe import OwnedObjects, observe, taken_names
from aliasroll.planning import canary as canary_run
from aliasroll.planning import health, planner
from aliasroll.planning.canary import AnalysisResult
from aliasroll.planning.records import DeleteAlias, RegistryWrite, SetAlias, TagVersion
from aliasroll.planning.state import AliasTarget, EventRecord, RegistryView
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller, Wake
from aliasroll.registry.types import Credentials, Endpoint
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def post(self, body: Mapping[str, Any], event: EventRecord) -> None: ...


class TagWriter(Protocol):
    """Writes the version tags passes plan (controller.records)."""

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Sequence[TagVersion], wake: Wake
    ) -> TagsState: ...

    def progressed(self) -> None: ...

    def forget(self, uid: str) -> None: ...


class CredentialSource(Protocol):
    """Registry credentials from Secrets (kube.credentials.SecretCache)."""

    async def credentials(self, *, uid: str, namespace: str, secret_name: str, wake: Wake) -> Credentials: ...

    def release(self, uid: str) -> None: ...


@dataclass(frozen=True)
class PassResult:
    """When the next pass is due if nothing wakes the resource earlier; `failed` asks for backoff;
    `gone` says the API server no longer has the resource (a deletion the watch missed)."""

    next_in: float | None
    failed: AliasrollError | None = None
    gone: bool = False
    # False when a failure needs no retries of its own: the registry poller retries a registry that
    # is down (with its own backoff) and wakes the resource when the answer changes, and the Secret
    # watch wakes it when its Secret changes. Passes of every resource retrying on their own would
    # multiply the load of an outage by the number of resources.
    back_off: bool = True


GONE = PassResult(next_in=None, gone=True)
# Writes the API server refuses with a server error (HTTP 5xx) are retried with backoff, and after
# this many failed passes in a row they are shown in status as well: a Service whose create fails
# with "range is full" (the IP allocator) or a failing admission webhook fails every time.
SHOW_WRITE_FAILURES_AFTER = 3
# A canary step that ends, or a measurement that is due, brings the next pass forward, never closer
# than this to the last one.
MIN_CANARY_PASS_SECONDS = 1.0
# A resource at rest (health.at_rest) is woken by what can change it (its model's poller, watches);
# its own timer is only a safety net, rare enough that a thousand of them cost the operator
# little (at a 10 s poll, a pass of every resource every interval kept a core a third busy).
AT_REST_PASS_SECONDS = 300.0


def _moved_on(status: Mapping[str, Any], before: Mapping[str, Any]) -> bool:
    """Whether status says something new besides the state of the records (a rollout moved on)."""

    def rest(of: Mapping[str, Any]) -> dict[str, Any]:
        found = of.get("conditions") or ()
        return {**of, "conditions": [c for c in found if c.get("type") != reasons.RECORDED]}

    return rest(status) != rest(before)


def resource_ref(body: Mapping[str, Any]) -> ResourceRef:
    meta = body["metadata"]
    return ResourceRef(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        generation=int(meta.get("generation") or 0),
    )


class Reconciler:
    def __init__(
        self,
        *,
        client: AsyncClient,
        objects: OwnedObjects,
        registry: RegistryPoller,
        events: EventSink,
        defaults: WorkloadDefaults,
        secrets: CredentialSource | None = None,
        analyzer: Analyzer | None = None,
        tags: TagWriter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._objects = objects
        self._secrets = secrets
        self._registry = registry
        self._analyzer = analyzer or Analyzer(objects)
        # Passes in a row whose writes failed with a server error, by uid.
        self._write_failures: dict[str, int] = {}
        # Every pass plans all of its version tags (they are idempotent); the writer makes the new
        # ones, beside the passes in the operator (controller.records).
        self._tags = tags or InlineTags(registry)
        self._applier = Applier(client)
        self._events = events
        self._defaults = defaults
        self._clock = clock
        # The status each resource was last given, by uid. The watch delivers our own status write
        # a moment later, and a pass that ran on the older body would otherwise announce the same
        # rollout twice. Empty after a restart, when the listed bodies are current anyway.
        self._written: dict[str, Mapping[str, Any]] = {}

    async def reconcile(self, body: Mapping[str, Any], *, wake: Wake) -> PassResult:
        try:
            return await self._reconcile(body, wake)
        except KubernetesUnavailable as error:
            # Nothing was pruned on a partial picture, and status is left as it was: retry soon.
            meta = body["metadata"]
            log.warning("%s/%s: %s; will retry", meta["namespace"], meta["name"], error)
            return PassResult(next_in=error.retry_after, failed=error)

    async def _reconcile(self, body: Mapping[str, Any], wake: Wake) -> PassResult:
        owner = resource_ref(body)
        previous_status: Mapping[str, Any] = self._written.get(owner.uid) or body.get("status") or {}
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec as error:
            # Nothing is applied or pruned: what runs keeps running until the spec is fixed.
            return await self._refuse(body, owner, previous_status, error, then=PassResult(next_in=None))

        try:
            observation = await observe(self._objects, owner)
        except KubernetesApplyFailed as error:  # RBAC on a list: nothing applied or pruned blind
            retry = PassResult(next_in=spec.registry.poll_seconds, failed=error)
            return await self._refuse(body, owner, previous_status, error, then=retry)
        now = self._clock()
        analysis = await self._measure(owner, spec, previous_status, now)
        view, endpoint = await self._registry_view(owner, spec, wake)
        plan = planner.plan(
            owner=owner,
            spec=spec,
            view=view,
            observed=observation.state,
            previous_status=previous_status,
            now=now,
            defaults=self._defaults,
            analysis=analysis,
        )
        try:
            if taken := await taken_names(self._client, owner, plan.objects, observation.live):
                raise NameConflict(
                    f"{'; '.join(taken)}: the name is taken by an object this ModelDeployment does not "
                    "control, so nothing was changed; rename the ModelDeployment or remove that object"
                )
            written = await self._applier.apply(plan.objects, observation.live)
            pruned = await self._applier.prune(plan.prune, namespace=owner.namespace)
        except (KubernetesApplyFailed, NameConflict) as error:
            # Status keeps saying what runs; the plan's status would claim what was not applied.
            self._write_failures.pop(owner.uid, None)
            retry = PassResult(next_in=spec.registry.poll_seconds, failed=error)
            return await self._refuse(body, owner, previous_status, error, then=retry)
        except KubernetesUnavailable as error:
            return await self._write_failed(body, owner, previous_status, error)
        self._write_failures.pop(owner.uid, None)
        if written or pruned:
            log.info("%s/%s: applied %s, pruned %s", owner.namespace, owner.name, written, pruned)
        # Registry writes before status, so status never says an alias moved that did not.
        recorded, problems, tags = await self._record(owner, spec.model.name, endpoint, plan.writes, wake)
        status = planner.with_records(
            plan.status,
            previous_status,
            problems=[*problems, *tags.problems],
            pending=tags.pending,
            wrote=bool(plan.writes),
            owner=owner,
            now=now,
        )
        if written or pruned or _moved_on(status, previous_status):
            self._tags.progressed()  # tags wait while rollouts come in a burst
        try:
            if not await self._write_status(body, owner, status):
                return GONE
        except KubernetesApplyFailed as error:
            log.error("%s/%s: %s", owner.namespace, owner.name, error)
            return PassResult(next_in=spec.registry.poll_seconds, failed=error)
        for event in (*plan.events, *recorded):
            self._events.post(body, event)
        failed = view.error if view.error is not None and view.error.transient else None
        next_in = spec.registry.poll_seconds
        if health.at_rest(status) and view.error is None:
            next_in = max(next_in, AT_REST_PASS_SECONDS)
        if plan.next_in is not None:  # a canary step ends or a measurement is due sooner
            next_in = max(MIN_CANARY_PASS_SECONDS, min(next_in, plan.next_in))
        # A registry error is the poller's to retry (and the Secret watch's, for credentials): it
        # wakes this resource when the answer changes, so an outage adds no passes.
        return PassResult(next_in=next_in, failed=failed, back_off=False)

    async def _write_failed(
        self,
        body: Mapping[str, Any],
        owner: ResourceRef,
        previous_status: Mapping[str, Any],
        error: KubernetesUnavailable,
    ) -> PassResult:
        """A write the API server answered with a server error: retried with backoff, and shown in
        status (Ready=False, ApplyFailed, the API server's message) once it keeps failing."""
        failures = self._write_failures[owner.uid] = self._write_failures.get(owner.uid, 0) + 1
        retry = PassResult(next_in=error.retry_after, failed=error)
        if failures < SHOW_WRITE_FAILURES_AFTER:
            log.warning("%s/%s: %s; will retry", owner.namespace, owner.name, error)
            return retry
        shown = KubernetesApplyFailed(f"{error.message} (retrying with backoff)")
        log.warning("%s/%s: %s (%d passes in a row)", owner.namespace, owner.name, error, failures)
        return await self._refuse(body, owner, previous_status, shown, then=retry)

    async def _measure(
        self, owner: ResourceRef, spec: ModelDeploymentSpec, previous_status: Mapping[str, Any], now: datetime
    ) -> AnalysisResult | None:
        run = canary_run.from_status(previous_status.get("canary"))
        if run is None or not canary_run.measurement_due(spec, run, now):
            return None
        return await self._analyzer.measure(
            owner=owner, spec=spec, run=run, previous_status=previous_status, now=now
        )

    async def _record(
        self,
        owner: ResourceRef,
        model: str,
        endpoint: Endpoint | None,
        writes: tuple[RegistryWrite, ...],
        wake: Wake,
    ) -> tuple[list[EventRecord], list[str], TagsState]:
        """Makes the plan's alias writes and hands its tags to the tag writer: (events of the alias
        writes made, problems of the ones refused, the tags' state). A registry that refuses
        writes never stops the pass: serving goes on, a condition says why."""
        if endpoint is None or not writes:
            return [], [], TagsState()
        events: list[EventRecord] = []
        problems: list[str] = []
        for write in writes:
            try:
                if isinstance(write, SetAlias):
                    await self._registry.set_alias(endpoint, model, write.alias, write.version)
                elif isinstance(write, DeleteAlias):
                    await self._registry.delete_alias(endpoint, model, write.alias)
                else:
                    continue
            except AliasrollError as error:
                log.warning("%s/%s: registry write failed: %s", owner.namespace, owner.name, error)
                problems.append(error.message)
                continue
            if write.event is not None:
                events.append(write.event)
        tags = [write for write in writes if isinstance(write, TagVersion)]
        return events, problems, await self._tags.submit(owner, endpoint, model, tags, wake)

    def forget(self, uid: str) -> None:
        """The resource is gone (or no longer watched): drop its subscription and memory."""
        self._registry.unsubscribe(uid)
        if self._secrets is not None:
            self._secrets.release(uid)
        self._written.pop(uid, None)
        self._write_failures.pop(uid, None)
        self._tags.forget(uid)
        self._analyzer.forget(uid)

    async def _write_status(
        self, body: Mapping[str, Any], owner: ResourceRef, status: Mapping[str, Any]
    ) -> bool:
        """Written once per pass, and only when it differs from what the API server holds.

        False when the API server no longer has the resource (deleted during the pass, or earlier
        and the watch missed it)."""
        if status != body.get("status") and not await self._applier.write_status(owner, status):
            return False
        self._written[owner.uid] = status
        return True

    async def _registry_view(
        self, owner: ResourceRef, spec: ModelDeploymentSpec, wake: Wake
    ) -> tuple[RegistryView, Endpoint | None]:
        """The registry's answer, and the endpoint it came from (None when it could not be built)."""
        model = spec.model.name
        endpoint: Endpoint | None = None
        try:
            credentials: Credentials | None = None
            if spec.registry.credentials_secret:
                if self._secrets is None:
                    raise CredentialsNotFound("this operator reads no Secrets (no Secret cache)")
                credentials = await self._secrets.credentials(
                    uid=owner.uid,
                    namespace=owner.namespace,
                    secret_name=spec.registry.credentials_secret,
                    wake=wake,
                )
            elif self._secrets is not None:
                self._secrets.release(owner.uid)  # it named one before: stop watching it
            endpoint = Endpoint(spec.registry.tracking_uri, credentials)
            snapshot = await self._registry.subscribe(
                subscriber=owner.uid,  # not the name: a replaced object may overlap its successor
                endpoint=endpoint,
                model=model,
                interval=spec.registry.poll_seconds,
                wake=wake,
            )
            if snapshot.error is not None:
                return RegistryView(model=model, error=snapshot.error), endpoint
            aliases = snapshot.aliases or {}

            async def target(alias: str) -> AliasTarget:
                version = aliases.get(alias)
                if version is None:
                    return AliasTarget(alias=alias, version=None)
                info = await self._registry.version(endpoint, model, version, ttl=spec.registry.poll_seconds)
                return AliasTarget(alias=alias, version=version, info=info)

            view = RegistryView(
                model=model,
                production=await target(spec.model.alias),
                canary=await target(spec.canary.alias) if spec.canary else None,
            )
            return view, endpoint
        except KubernetesUnavailable:
            raise  # the API server, not the registry: the whole pass is retried
        except AliasrollError as error:
            return RegistryView(model=model, error=error), endpoint

    async def _refuse(
        self,
        body: Mapping[str, Any],
        owner: ResourceRef,
        previous_status: Mapping[str, Any],
        error: AliasrollError,
        *,
        then: PassResult,
    ) -> PassResult:
        """Ready=False with the error's reason; everything else in status stays as it was. Returns
        `then`, or GONE when the resource no longer exists."""
        refusal = planner.refused(
            owner=owner, previous_status=previous_status, error=error, now=self._clock()
        )
        try:
            if not await self._write_status(body, owner, refusal.status):
                return GONE
        except KubernetesApplyFailed as write_error:  # the event below still says what is wrong
            log.error("%s/%s: %s (while reporting: %s)", owner.namespace, owner.name, write_error, error)
        for event in refusal.events:
            self._events.post(body, event)
        return then
