"""What planning/fleet.py keeps in status, both ways: a restarted operator decides from status alone.

    status.warm        [{model, version, since, until, replicas, routed}]  versions kept warm after
                       leaving @production (`routed: true` while one still drains)
    status.fastSwitch  {kind, since, from: {model, version}, to: {model, version}}  a fast move under way

Beside them the planner's own status.production and status.canary (their `modelUri`) say which
version each alias was given last: `remembered` reads all of it back, and `Memory.join` puts it on the
Deployments the cluster runs. The shapes are planning/status.py's, which a test holds to the CRD's
schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypedDict

from aliasroll.planning.fleet import Decision, MoveKind, Role, RunningVersion, Switch, VersionId
from aliasroll.planning.status import FastSwitchStatus, WarmVersionStatus

MODELS_PREFIX = "models:/"


class FleetStatus(TypedDict, total=False):
    warm: list[WarmVersionStatus]
    fastSwitch: FastSwitchStatus


@dataclass(frozen=True)
class Memory:
    """What status says of the versions: the roles the last pass gave, and a fast move under way."""

    production: VersionId | None = None
    canary: VersionId | None = None
    left: Mapping[VersionId, datetime] = field(default_factory=dict)  # status.warm[].since
    switch: Switch | None = None

    def join(self, observed: Sequence[RunningVersion]) -> list[RunningVersion]:
        """The running versions as the cluster shows them, with what status remembers of each."""
        return [
            replace(version, was=self.role(version), left_production=self.left.get(version.id))
            for version in observed
        ]

    def role(self, version: RunningVersion) -> Role | None:
        """The role the last pass gave: the aliases' from status; a version they no longer name is
        leaving while the gate routes it (the cluster says so), warm once unrouted if status keeps it."""
        if version.id == self.production:
            return Role.PRODUCTION
        if version.id == self.canary:
            return Role.CANARY
        if version.routed:
            return Role.LEAVING
        return Role.WARM if version.id in self.left else None


def to_status(decision: Decision) -> FleetStatus:
    """status.warm and status.fastSwitch after this pass (keys left out when empty)."""
    warm: list[WarmVersionStatus] = []
    for plan in decision.versions:
        if plan.left_production is None:
            continue
        entry: WarmVersionStatus = {
            "model": plan.id.model,
            "version": plan.id.version,
            "since": stamp(plan.left_production),
            "replicas": plan.replicas,
            "routed": plan.routed,
        }
        if plan.warm_until is not None:
            entry["until"] = stamp(plan.warm_until)
        warm.append(entry)
    status: FleetStatus = {}
    if warm:
        status["warm"] = warm
    if decision.switch is not None:
        switch = decision.switch
        status["fastSwitch"] = {
            "kind": switch.kind.value,
            "since": stamp_ms(switch.since),
            "from": {"model": switch.source.model, "version": switch.source.version},
            "to": {"model": switch.target.model, "version": switch.target.version},
        }
    return status


def remembered(status: Mapping[str, Any]) -> Memory:
    """What a status (this operator's, an older one's, or one edited by hand) says; what cannot be
    read is left out, which only costs warmth (a version not known warm goes once unrouted)."""
    left: dict[VersionId, datetime] = {}
    for entry in status.get("warm") or ():
        version = _ref(entry)
        since = _time(entry.get("since")) if version is not None else None
        if version is not None and since is not None:
            left[version] = since
    return Memory(
        production=_track(status.get("production")),
        canary=_track(status.get("canary")),
        left=left,
        switch=_switch(status.get("fastSwitch")),
    )


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_ms(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds when the moment has them (a fast move's start: the
    FastRollback event's seconds are counted from it), else as `stamp`."""
    if moment.microsecond // 1000 == 0:
        return stamp(moment)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_uri(version: VersionId) -> str:
    return f"{MODELS_PREFIX}{version.model}/{version.version}"


def _track(entry: object) -> VersionId | None:
    """The version of status.production or status.canary, from its pinned model URI."""
    if not isinstance(entry, Mapping):
        return None
    uri = entry.get("modelUri")
    if not isinstance(uri, str) or not uri.startswith(MODELS_PREFIX) or "/" not in uri[len(MODELS_PREFIX) :]:
        return None
    model, _, version = uri[len(MODELS_PREFIX) :].rpartition("/")
    return VersionId(model, version) if model and version else None


def _switch(entry: object) -> Switch | None:
    if not isinstance(entry, Mapping):
        return None
    source, target, since = _ref(entry.get("from")), _ref(entry.get("to")), _time(entry.get("since"))
    try:
        kind = MoveKind(str(entry.get("kind")))
    except ValueError:
        return None
    if source is None or target is None or since is None:
        return None
    return Switch(kind, source, target, since)


def _ref(entry: object) -> VersionId | None:
    if not isinstance(entry, Mapping):
        return None
    model, version = entry.get("model"), entry.get("version")
    if not isinstance(model, str) or not isinstance(version, str) or not model or not version:
        return None
    return VersionId(model, version)


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
