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
from aliasroll.planning.canary import CanaryRun, Phase, Registry, stamp
from aliasroll.planning.state import EventRecord
from aliasroll.spec import ModelDeploymentSpec, OnAbort, Promotion, ResourceRef

TAG_PREFIX = "aliasroll.io"


@dataclass(frozen=True)
class SetAlias:
    alias: str
    version: str
    event: EventRecord | None = None  # posted once the registry took the write


@dataclass(frozen=True)
class DeleteAlias:
    alias: str
    version: str  # the version it must still point at (the reconciler checks the view it read)
    event: EventRecord | None = None


@dataclass(frozen=True)
class TagVersion:
    """Written beside the passes, after them (controller.records): no event waits on it."""

    version: str
    tags: Mapping[str, str] = field(default_factory=dict)


RegistryWrite = SetAlias | DeleteAlias | TagVersion


def canary_writes(
    *, owner: ResourceRef, spec: ModelDeploymentSpec, run: CanaryRun | None, registry: Registry
) -> list[RegistryWrite]:
    canary = spec.canary
    if canary is None or run is None:
        return []
    writes: list[RegistryWrite] = []
    if (
        run.phase is Phase.PROMOTING
        and canary.promotion is Promotion.AUTO
        and run.promoting_from is not None
        and registry.production_alias == run.promoting_from
    ):
        message = (
            f"moved @{spec.model.alias} from version {run.promoting_from} to {run.version} in MLflow "
            "(every canary step passed)"
        )
        writes.append(
            SetAlias(spec.model.alias, run.version, EventRecord("Normal", reasons.ALIAS_MOVED, message))
        )
    if (
        run.phase is Phase.ABORTED
        and canary.on_abort is OnAbort.REMOVE_ALIAS
        and registry.canary_alias == run.version
    ):
        message = (
            f"removed @{canary.alias} from aborted version {run.version} in MLflow (onAbort: removeAlias)"
        )
        writes.append(
            DeleteAlias(canary.alias, run.version, EventRecord("Normal", reasons.ALIAS_REMOVED, message))
        )
    if run.ended and run.ended_at is not None:
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
        writes.append(TagVersion(run.version, tags))
    return writes


def served_tags(
    *, owner: ResourceRef, spec: ModelDeploymentSpec, history: Sequence[Mapping[str, Any]]
) -> list[RegistryWrite]:
    """One tag per span of status.history: where the version served (the resource and track), from
    when, and until when (`serving` while it still does). Keys hold no colon: MLflow servers on
    Windows refuse them."""
    writes: list[RegistryWrite] = []
    for span in history:
        if (
            span.get("model") not in (None, spec.model.name)
            or not span.get("version")
            or not span.get("from")
        ):
            continue
        started = str(span["from"])
        key = f"{TAG_PREFIX}/served/{owner.namespace}/{owner.name}/{span.get('track')}/{_compact(started)}"
        until = span.get("to")
        writes.append(
            TagVersion(
                str(span["version"]),
                {key: f"{started} to {until}" if until else f"{started} to now (serving)"},
            )
        )
    return writes


def _metric_text(metric: Mapping[str, Any]) -> str:
    parts = [f"{key}={metric[key]}" for key in ("canary", "production", "bound", "verdict") if key in metric]
    return " ".join(parts)


def _compact(timestamp: str) -> str:
    return timestamp.replace("-", "").replace(":", "")
