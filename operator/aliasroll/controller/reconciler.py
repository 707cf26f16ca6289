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

from aliasroll import allowlists, metrics
from aliasroll.allowlists import AllowLists
from aliasroll.controller.analyzer import Analyzer
from aliasroll.controller.slots import given_back
from aliasroll.controller.tag_writer import InlineTags, TagsState
from aliasroll.egress import Destinations
from aliasroll.errors import (
    AliasrollError,
    CredentialsNotFound,
    InvalidSpec,
    KubernetesApplyFailed,
    KubernetesUnavailable,
    NameConflict,
)
from aliasroll.kube.applier import Applier
from aliasroll.kube.observe import Observation, OwnedObjects, observe, taken_names
from aliasroll.planning import bake as bake_run
from aliasroll.planning import canary as canary_run
from aliasroll.planning import next_pass, planner, registry_writes
from aliasroll.planning.canary import AliasWrite, AnalysisResult
from aliasroll.planning.registry_writes import AliasChange, RegistryWrite, TagVersion
from aliasroll.planning.state import AliasTarget, EventRecord, RegistryView
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.registry.poller import RegistryPoller, Wake
from aliasroll.registry.types import Credentials, Endpoint
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def post(self, body: Mapping[str, Any], event: EventRecord) -> None: ...


class TagWriter(Protocol):
    """Writes the version tags passes plan (controller.tag_writer)."""

    async def submit(
        self, owner: ResourceRef, endpoint: Endpoint, model: str, writes: Sequence[TagVersion], wake: Wake
    ) -> TagsState: ...

    def progressed(self) -> None: ...

    def registry_answered(self, endpoint: Endpoint) -> None: ...

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


@dataclass(frozen=True)
class _Planned:
    """A pass's plan and what it was made from that the later steps use."""

    plan: planner.Plan
    view: RegistryView
    endpoint: Endpoint | None  # None when it could not be built (no credentials)
    analysis: AnalysisResult | None  # a canary reading taken by this pass
    bake_analysis: AnalysisResult | None  # a bake reading taken by this pass
    changes: list[AliasChange]  # the plan's alias changes, made after its status is written


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
        allowed: AllowLists | None = None,
        destinations: Destinations | None = None,
        secrets: CredentialSource | None = None,
        analyzer: Analyzer | None = None,
        tags: TagWriter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._objects = objects
        self._secrets = secrets
        self._registry = registry
        self._analyzer = analyzer or Analyzer(objects, destinations=destinations)
        # Passes in a row whose writes failed with a server error, by uid.
        self._write_failures: dict[str, int] = {}
        # Every pass plans all of its version tags (they are idempotent); the writer makes the new
        # ones, beside the passes in the operator (controller.tag_writer).
        self._tags = tags or InlineTags(registry)
        self._applier = Applier(client)
        self._events = events
        self._defaults = defaults
        self._allowed = allowed if allowed is not None else AllowLists()
        self._clock = clock
        # The status each resource was last given, by uid. The watch delivers our own status write
        # a moment later, and a pass that ran on the older body would otherwise announce the same
        # rollout twice. Empty after a restart, when the listed bodies are current anyway.
        self._written: dict[str, Mapping[str, Any]] = {}
        # A measurement whose pass could not write its status, by uid (_keep_unrecorded).
        self._unrecorded: dict[str, AnalysisResult] = {}

    async def reconcile(self, body: Mapping[str, Any], *, wake: Wake) -> PassResult:
        try:
            return await self._reconcile(body, wake)
        except KubernetesUnavailable as error:
            # Nothing was pruned on a partial picture, and status is left as it was: retry soon.
            meta = body["metadata"]
            log.warning("%s/%s: %s; will retry", meta["namespace"], meta["name"], error)
            return PassResult(next_in=error.retry_after, failed=error)

    async def _reconcile(self, body: Mapping[str, Any], wake: Wake) -> PassResult:
        """The pass as named steps: parse, observe, plan (measuring and reading the registry on the
        way), apply, record, write status, announce, then time the next pass."""
        owner = resource_ref(body)
        previous_status: Mapping[str, Any] = self._written.get(owner.uid) or body.get("status") or {}
        try:
            spec = self._parse(body, owner)
        except InvalidSpec as error:
            # Nothing is applied or pruned: what runs keeps running until the spec is fixed.
            return await self._refuse(body, owner, previous_status, error, then=PassResult(next_in=None))
        try:
            observation = await observe(self._objects, owner)
        except KubernetesApplyFailed as error:  # RBAC on a list: nothing applied or pruned blind
            retry = PassResult(next_in=spec.registry.poll_seconds, failed=error)
            return await self._refuse(body, owner, previous_status, error, then=retry)
        now = self._clock()
        planned = await self._plan(owner, spec, observation, previous_status, now, wake)
        applied = await self._apply(body, owner, spec, planned.plan, observation, previous_status)
        if isinstance(applied, PassResult):
            return applied
        status = await self._recorded(owner, spec, planned, previous_status, now, wake, applied=applied)
        try:
            if not await self._write_status(body, owner, status):
                return GONE
        except KubernetesApplyFailed as error:
            log.error("%s/%s: %s", owner.namespace, owner.name, error)
            self._keep_unrecorded(owner.uid, planned.analysis)
            self._keep_unrecorded(bake_run.reading_key(owner.uid), planned.bake_analysis)
            return PassResult(next_in=spec.registry.poll_seconds, failed=error)
        self._unrecorded.pop(owner.uid, None)
        self._unrecorded.pop(bake_run.reading_key(owner.uid), None)
        self._announce(body, planned.plan)
        if planned.changes and planned.endpoint is not None:
            done = await self._change_aliases(
                body, owner, spec.model.name, planned.endpoint, planned.changes, status, now
            )
            if done is GONE:
                return GONE
        view_error = planned.view.error
        end = next_pass.PassEnd(
            spec=spec,
            status=status,
            now=now,
            registry_answered=view_error is None,
            canary_due_in=planned.plan.next_in,
            reading_under_way=self._analyzer.measuring(owner.uid),
            bake_reading_under_way=self._analyzer.measuring(bake_run.reading_key(owner.uid)),
        )
        # A registry error is the poller's to retry (and the Secret watch's, for credentials): it
        # wakes this resource when the answer changes, so an outage adds no passes.
        failed = view_error if view_error is not None and view_error.transient else None
        return PassResult(next_in=next_pass.next_pass_in(end), failed=failed, back_off=False)

    def _announce(self, body: Mapping[str, Any], plan: planner.Plan) -> None:
        """The pass's events, once its status is written; a fast move that ended is timed in
        aliasroll_fast_switch_seconds as its FastRollback event says it."""
        for event in plan.events:
            self._events.post(body, event)
        if plan.fast_move is not None:
            kind = plan.fast_move.kind.value
            metrics.FAST_SWITCH_SECONDS.labels(kind).observe(plan.fast_move.seconds)

    def _parse(self, body: Mapping[str, Any], owner: ResourceRef) -> ModelDeploymentSpec:
        """The spec, checked against the operator's allow-lists (what they refuse, NotAllowed, is
        handled as an invalid spec)."""
        spec = parse_spec(body.get("spec") or {})
        allowlists.check(spec, namespace=owner.namespace, allowed=self._allowed)
        return spec

    async def _plan(
        self,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        observation: Observation,
        previous_status: Mapping[str, Any],
        now: datetime,
        wake: Wake,
    ) -> _Planned:
        """Takes a finished canary reading when one is due, reads the registry, and asks the planner."""
        analysis = await self._measure(owner, spec, previous_status, now, wake)
        bake_analysis = await self._measure_bake(owner, spec, previous_status, now, wake)
        view, endpoint = await self._registry_view(owner, spec, wake)
        if view.error is None and endpoint is not None:
            self._tags.registry_answered(endpoint)  # writes held back by an outage go now
        plan = planner.plan(
            owner=owner,
            spec=spec,
            view=view,
            observed=observation.state,
            previous_status=previous_status,
            now=now,
            defaults=self._defaults,
            analysis=analysis,
            bake_analysis=bake_analysis,
        )
        changes = [write for write in plan.writes if isinstance(write, AliasChange)]
        return _Planned(
            plan=plan,
            view=view,
            endpoint=endpoint,
            analysis=analysis,
            bake_analysis=bake_analysis,
            changes=changes,
        )

    async def _apply(
        self,
        body: Mapping[str, Any],
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        plan: planner.Plan,
        observation: Observation,
        previous_status: Mapping[str, Any],
    ) -> bool | PassResult:
        """Checks names, applies and prunes. Whether anything changed, or how the pass ends when the
        API server refused: status then keeps saying what runs (the plan's would claim what was not
        applied)."""
        try:
            if taken := await taken_names(self._client, owner, plan.objects, observation.live):
                raise NameConflict(
                    f"{'; '.join(taken)}: the name is taken by an object this ModelDeployment does not "
                    "control, so nothing was changed; rename the ModelDeployment or remove that object"
                )
            # Version mode: the gates first (they name pods that exist, so their Deployments do): the
            # routing a pass decides is what a fast move waits on, the objects' changes are not.
            written = await self._applier.set_gates(plan.gates, namespace=owner.namespace)
            written += await self._applier.apply(plan.objects, observation.live)
            pruned = await self._applier.prune(plan.prune, namespace=owner.namespace)
        except (KubernetesApplyFailed, NameConflict) as error:
            self._write_failures.pop(owner.uid, None)
            retry = PassResult(next_in=spec.registry.poll_seconds, failed=error)
            return await self._refuse(body, owner, previous_status, error, then=retry)
        except KubernetesUnavailable as error:
            return await self._write_failed(body, owner, previous_status, error)
        self._write_failures.pop(owner.uid, None)
        if written or pruned:
            log.info("%s/%s: applied %s, pruned %s", owner.namespace, owner.name, written, pruned)
        return bool(written or pruned)

    async def _recorded(
        self,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        planned: _Planned,
        previous_status: Mapping[str, Any],
        now: datetime,
        wake: Wake,
        *,
        applied: bool,
    ) -> dict[str, Any]:
        """Hands the plan's version tags to the tag writer, and returns the status to write: the
        plan's, with the Recorded condition and the alias changes marked Attempted."""
        plan = planned.plan
        tags = await self._submit_tags(owner, spec.model.name, planned.endpoint, plan.writes, wake)
        status = planner.with_records(
            plan.status,
            previous_status,
            problems=list(tags.problems),
            pending=tags.pending,
            wrote=bool(plan.writes),
            owner=owner,
            now=now,
        )
        # Status says an alias change is being made before it is (registry_writes.AliasChange): a
        # pass that stops half-way never makes it twice, and an abort is recorded before its
        # @canary goes.
        for change in planned.changes:
            status = planner.with_alias_write(status, change.run, AliasWrite.ATTEMPTED, record=change.record)
        if applied or next_pass.moved_on(status, previous_status):
            self._tags.progressed()  # tags wait while rollouts come in a burst
        return status

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
        self,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        previous_status: Mapping[str, Any],
        now: datetime,
        wake: Wake,
    ) -> AnalysisResult | None:
        """A finished measurement for the planner when one is due, or None. Never waits for the
        metrics: the analyzer reads them outside the pass and wakes the resource when it has."""
        run = canary_run.from_status(previous_status.get("canary"))
        if run is None or not canary_run.measurement_due(spec, run, now):
            return None
        kept = self._unrecorded.get(owner.uid)
        if kept is not None and kept.version == run.version:
            return kept
        self._unrecorded.pop(owner.uid, None)
        result = await self._analyzer.measure(
            owner=owner, spec=spec, run=run, previous_status=previous_status, now=now, wake=wake
        )
        # Taken from the analyzer once: kept until a status that records it is written, so a pass
        # that ends before that (a refused apply, the API server away) hands it to the next one.
        self._keep_unrecorded(owner.uid, result)
        return result

    async def _measure_bake(
        self,
        owner: ResourceRef,
        spec: ModelDeploymentSpec,
        previous_status: Mapping[str, Any],
        now: datetime,
        wake: Wake,
    ) -> AnalysisResult | None:
        """As `_measure`, for a bake (spec.rollback.bake) whose reading is due: its own readings and
        its own kept result (key `<uid>/bake`), beside a canary run's."""
        bake = bake_run.from_status(previous_status.get(bake_run.KEY))
        if bake is None or not bake_run.measurement_due(spec, bake, now):
            return None
        key = bake_run.reading_key(owner.uid)
        kept = self._unrecorded.get(key)
        if kept is not None and kept.version == bake.version:
            return kept
        self._unrecorded.pop(key, None)
        result = await self._analyzer.measure_bake(
            owner=owner, spec=spec, version=bake.version, now=now, wake=wake
        )
        self._keep_unrecorded(key, result)
        return result

    async def _submit_tags(
        self,
        owner: ResourceRef,
        model: str,
        endpoint: Endpoint | None,
        writes: tuple[RegistryWrite, ...],
        wake: Wake,
    ) -> TagsState:
        """Hands the plan's version tags to the tag writer (they never hold a pass up), per model
        (a span of a model the resource served before a rename is closed in that model)."""
        tags = [write for write in writes if isinstance(write, TagVersion)]
        if endpoint is None or not tags:
            return TagsState()
        by_model: dict[str, list[TagVersion]] = {}
        for write in tags:
            by_model.setdefault(write.model or model, []).append(write)
        states = [
            await self._tags.submit(owner, endpoint, name, group, wake) for name, group in by_model.items()
        ]
        return TagsState(
            pending=any(state.pending for state in states),
            problems=tuple(problem for state in states for problem in state.problems),
        )

    async def close_spans(self, body: Mapping[str, Any], *, why: str) -> None:
        """The resource is gone: the end of each span it still served is written to MLflow (by the
        tag writer, after the resource; only while this process leads), so the registry's record
        never says "to now (serving)" of a version nothing serves any more."""
        owner = resource_ref(body)
        status: Mapping[str, Any] = self._written.get(owner.uid) or body.get("status") or {}
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec:
            return
        closing = registry_writes.closing_tags(
            owner=owner, history=status.get("history") or (), now=canary_run.stamp(self._clock()), why=why
        )
        if not closing:
            return
        credentials: Credentials | None = None
        try:
            if spec.registry.credentials_secret and self._secrets is not None:
                credentials = await self._secrets.credentials(
                    uid=owner.uid,
                    namespace=owner.namespace,
                    secret_name=spec.registry.credentials_secret,
                    wake=lambda: None,
                )
            endpoint = Endpoint(spec.registry.tracking_uri, credentials)
            await self._submit_tags(owner, spec.model.name, endpoint, tuple(closing), lambda: None)
        except AliasrollError as error:
            log.warning("%s/%s: the end of its spans is not recorded: %s", owner.namespace, owner.name, error)

    async def _change_aliases(
        self,
        body: Mapping[str, Any],
        owner: ResourceRef,
        model: str,
        endpoint: Endpoint,
        changes: list[AliasChange],
        status: Mapping[str, Any],
        now: datetime,
    ) -> PassResult | None:
        """Makes the alias changes status now says are being made (evidence first), then writes how
        they went: Made, or Planned again (retried by a later pass) when the registry failed. An alias
        that no longer names what the change expects is left alone: a human moved it, and the next
        pass, seeing the registry's answer, says so. Returns GONE when the resource went meanwhile."""
        events: list[EventRecord] = []
        problems: list[str] = []
        for change in changes:
            state = AliasWrite.PLANNED
            try:
                if change.evidence is not None:
                    await self._registry.set_version_tags(
                        endpoint, model, change.evidence.version, change.evidence.tags
                    )
                found = await self._registry.change_alias(
                    endpoint, model, change.alias, expect=change.expect, to=change.to
                )
            except AliasrollError as error:
                log.warning("%s/%s: registry write failed: %s", owner.namespace, owner.name, error)
                metrics.REGISTRY_WRITES.labels("alias", error.reason).inc()
                problems.append(error.message)
            else:
                if found.get(change.alias) == change.expect:
                    metrics.REGISTRY_WRITES.labels("alias", "written").inc()
                    state = AliasWrite.MADE
                    events.append(change.event)
                else:
                    metrics.REGISTRY_WRITES.labels("alias", "moved").inc()
                    log.info(
                        "%s/%s: @%s names %s, not %s: left as it is",
                        owner.namespace, owner.name, change.alias, found.get(change.alias), change.expect,
                    )  # fmt: skip
                    # A removal has nothing left to do; a promotion is never to be made now: the
                    # next pass calls it off.
                    state = AliasWrite.MADE if change.to is None else AliasWrite.ATTEMPTED
            status = planner.with_alias_write(status, change.run, state, record=change.record)
        if problems:
            status = planner.with_records(status, status, problems=problems, wrote=True, owner=owner, now=now)
        try:
            if not await self._write_status(body, owner, status):
                return GONE
        except KubernetesApplyFailed as error:
            # The changes' outcome is not in status: the next pass reads them as Attempted (a made
            # removal is seen in the registry; a made promotion too, or a human's move wins).
            log.error("%s/%s: %s", owner.namespace, owner.name, error)
        for event in events:
            self._events.post(body, event)
        return None

    def _keep_unrecorded(self, uid: str, analysis: AnalysisResult | None) -> None:
        """A measurement whose status is not written yet (or could not be) is used by the next pass
        instead of a new reading: the metrics reader's baseline has moved past its window, which
        would be lost."""
        if analysis is not None and analysis.measurement is not None:
            self._unrecorded[uid] = analysis

    async def aclose(self) -> None:
        """The operator stops: canary readings under way end, the analysis' HTTP clients close."""
        await self._analyzer.aclose()

    def forget(self, uid: str) -> None:
        """The resource is gone (or no longer watched): drop its subscription and memory."""
        self._registry.unsubscribe(uid)
        if self._secrets is not None:
            self._secrets.release(uid)
        self._written.pop(uid, None)
        self._write_failures.pop(uid, None)
        self._unrecorded.pop(uid, None)
        self._unrecorded.pop(bake_run.reading_key(uid), None)
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
            # A registry is the tenant's choice: no pass slot waits on it (controller/slots.py).
            async with given_back():
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
                async with given_back():
                    info = await self._registry.version(
                        endpoint, model, version, ttl=spec.registry.poll_seconds
                    )
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
