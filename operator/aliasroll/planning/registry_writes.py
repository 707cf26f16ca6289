"""What the operator writes to the registry: the alias moves a canary policy asks for, and tags on
model versions that record where and when each version served and how its canary ended.

MLflow is where the team looks, and it outlives the ModelDeployment: the tags answer "which version
served production at any point in time" even after the resource is deleted (status.history is the
cluster's bounded view of the same). Every write is idempotent (a tag key names one fact; a repeated
write sets the same value), so a restarted operator may repeat them and the reconciler may skip the
ones it already made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aliasroll import reasons
from aliasroll.planning.bake import KEY as BAKE_KEY
from aliasroll.planning.bake import Bake
from aliasroll.planning.bake import Moment as BakeMoment
from aliasroll.planning.bake import Phase as BakePhase
from aliasroll.planning.canary import AliasWrite, CanaryRun, Phase, Registry, stamp
from aliasroll.planning.state import EventRecord
from aliasroll.spec import ModelDeploymentSpec, OnAbort, Promotion, ResourceRef

TAG_PREFIX = "aliasroll.io"


@dataclass(frozen=True)
class AliasChange:
    """An alias the operator moves (a promotion: @production to the canary's version) or removes (an
    abort with onAbort removeAlias: @canary). Made only after status says it is being made (so a
    restart never makes it twice), and only while the alias still names `expect`, read just before
    the write: a human's move, however recent, wins."""

    run: str  # the canary run's version (whose status records the change)
    alias: str
    expect: str
    to: str | None  # None: the alias is removed
    event: EventRecord  # posted once the registry took it
    # Written first: the record the change would otherwise leave without its evidence (an aborted
    # run's outcome, before its @canary goes).
    evidence: TagVersion | None = None
    # Which status entry records the change: "" the canary run's (status.canary, status.lastCanary);
    # "bake" status.bake (a failed bake's move of @production back).
    record: str = ""


@dataclass(frozen=True)
class TagVersion:
    """Written beside the passes, after them (controller.tag_writer): no event waits on it."""

    version: str
    tags: Mapping[str, str] = field(default_factory=dict)
    # The registered model the version belongs to; None: the one spec.model.name names. Another one
    # for the spans of a model the resource served before spec.model.name changed.
    model: str | None = None


RegistryWrite = AliasChange | TagVersion


def canary_writes(
    *, owner: ResourceRef, spec: ModelDeploymentSpec, run: CanaryRun | None, registry: Registry | None
) -> list[RegistryWrite]:
    """A run's alias change (with `registry`: the answer of this pass; none without one) and, once it
    ended, its outcome tags."""
    canary = spec.canary
    if canary is None or run is None:
        return []
    writes: list[RegistryWrite] = []
    outcome = _outcome_tags(owner, run)
    if (
        registry is not None
        and run.phase is Phase.PROMOTING
        and canary.promotion is Promotion.AUTO
        and run.alias_write is AliasWrite.PLANNED
        and run.promoting_from is not None
    ):
        message = (
            f"moved @{spec.model.alias} from version {run.promoting_from} to {run.version} in MLflow "
            "(every canary step passed)"
        )
        event = EventRecord("Normal", reasons.ALIAS_MOVED, message)
        writes.append(
            AliasChange(run.version, spec.model.alias, expect=run.promoting_from, to=run.version, event=event)
        )
    if (
        registry is not None
        and run.phase is Phase.ABORTED
        and canary.on_abort is OnAbort.REMOVE_ALIAS
        and run.alias_write is AliasWrite.PLANNED
        and registry.canary_alias == run.version
    ):
        message = (
            f"removed @{canary.alias} from aborted version {run.version} in MLflow (onAbort: removeAlias)"
        )
        event = EventRecord("Normal", reasons.ALIAS_REMOVED, message)
        writes.append(
            AliasChange(run.version, canary.alias, expect=run.version, to=None, event=event, evidence=outcome)
        )
    if outcome is not None:
        writes.append(outcome)
    return writes


def _outcome_tags(owner: ResourceRef, run: CanaryRun) -> TagVersion | None:
    """How an ended run ended, on its version in MLflow."""
    if not run.ended or run.ended_at is None:
        return None
    outcome = "promoted" if run.phase is Phase.SUCCEEDED else "aborted"
    tags = {
        f"{TAG_PREFIX}/canary.outcome": outcome,
        f"{TAG_PREFIX}/canary.time": stamp(run.ended_at),
        f"{TAG_PREFIX}/canary.deployment": f"{owner.namespace}/{owner.name}",
        f"{TAG_PREFIX}/canary.summary": run.message[:4000],
    }
    for metric in run.measurements:
        name = str(metric.get("metric", ""))
        if name:
            tags[f"{TAG_PREFIX}/canary.analysis.{name}"] = _metric_text(metric)
    return TagVersion(run.version, tags)


def bake_writes(
    *, owner: ResourceRef, spec: ModelDeploymentSpec, bake: Bake | None, moment: BakeMoment
) -> list[RegistryWrite]:
    """A failed bake's move of @production back (only on this pass's answer, while @production names
    the baked version: `expect`), and an ended bake's outcome tags (passed or failed)."""
    if bake is None or not bake.ended:
        return []
    outcome = _bake_outcome_tags(owner, bake)
    found: list[RegistryWrite] = []
    if (
        bake.phase is BakePhase.FAILED
        and bake.alias_write is AliasWrite.PLANNED
        and moment.fresh
        and moment.alias == bake.version
    ):
        alias = spec.model.alias
        message = (
            f"moved @{alias} from version {bake.version} back to {bake.previous} in MLflow (the bake of "
            f"version {bake.version} failed)"
        )
        event = EventRecord("Normal", reasons.ALIAS_MOVED, message)
        found.append(
            AliasChange(
                bake.version,
                alias,
                expect=bake.version,
                to=bake.previous,
                event=event,
                evidence=outcome,
                record=BAKE_KEY,
            )
        )
    if outcome is not None:
        found.append(outcome)
    return found


def _bake_outcome_tags(owner: ResourceRef, bake: Bake) -> TagVersion | None:
    """How a bake ended, on its version in MLflow (passed or failed; a superseded one has no outcome)."""
    if bake.phase not in (BakePhase.PASSED, BakePhase.FAILED) or bake.ended_at is None:
        return None
    tags = {
        f"{TAG_PREFIX}/bake.outcome": "failed" if bake.phase is BakePhase.FAILED else "passed",
        f"{TAG_PREFIX}/bake.time": stamp(bake.ended_at),
        f"{TAG_PREFIX}/bake.deployment": f"{owner.namespace}/{owner.name}",
        f"{TAG_PREFIX}/bake.summary": bake.message[:4000],
    }
    for metric in bake.measurements:
        if name := str(metric.get("metric", "")):
            parts = [f"{key}={metric[key]}" for key in ("canary", "bound", "verdict") if key in metric]
            tags[f"{TAG_PREFIX}/bake.analysis.{name}"] = " ".join(parts).replace("canary=", "value=")
    return TagVersion(bake.version, tags)


def served_tags(
    *, owner: ResourceRef, spec: ModelDeploymentSpec, history: Sequence[Mapping[str, Any]]
) -> list[TagVersion]:
    """One tag per span of status.history: where the version served (the resource and track), from
    when, and until when (`serving` while it still does). Spans of a model the resource served before
    spec.model.name changed are closed in that model (in the same registry). Keys hold no colon:
    MLflow servers on Windows refuse them."""
    writes: list[TagVersion] = []
    for span in history:
        if not span.get("version") or not span.get("from"):
            continue
        model = str(span.get("model") or spec.model.name)
        until = span.get("to")
        if model != spec.model.name and not until:
            continue  # an open span of another model: closed by the pass that ended it
        started = str(span["from"])
        writes.append(
            TagVersion(
                str(span["version"]),
                {
                    _served_key(owner, span): f"{started} to {until}"
                    if until
                    else f"{started} to now (serving)"
                },
                model=None if model == spec.model.name else model,
            )
        )
    return writes


def closing_tags(
    *, owner: ResourceRef, history: Sequence[Mapping[str, Any]], now: str, why: str
) -> list[TagVersion]:
    """The end of every span still open, for a resource that goes (deleted, or no longer watched):
    MLflow's record then says until when each version served, and why it stopped."""
    return [
        TagVersion(
            str(span["version"]),
            {_served_key(owner, span): f"{span['from']} to {now} ({why})"},
            model=str(span["model"]) if span.get("model") else None,
        )
        for span in history
        if span.get("version") and span.get("from") and not span.get("to")
    ]


def _served_key(owner: ResourceRef, span: Mapping[str, Any]) -> str:
    started = _compact(str(span["from"]))
    return f"{TAG_PREFIX}/served/{owner.namespace}/{owner.name}/{span.get('track')}/{started}"


def _metric_text(metric: Mapping[str, Any]) -> str:
    parts = [f"{key}={metric[key]}" for key in ("canary", "production", "bound", "verdict") if key in metric]
    return " ".join(parts)


def _compact(timestamp: str) -> str:
    return timestamp.replace("-", "").replace(":", "")
