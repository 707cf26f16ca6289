"""Which version each track runs, given the registry's answer and what runs now.

The rule users depend on: a registry that fails, an alias that disappears, or a version that is
missing or not READY never changes what serves production. The canary is different in one way only:
removing the @canary alias (or setting weight 0) is how a canary ends, so a missing canary alias
removes the canary workload; every failure still keeps the canary that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from aliasroll import reasons
from aliasroll.planning.state import AliasTarget, RegistryView, ServedVersion
from aliasroll.spec import ModelDeploymentSpec


@dataclass(frozen=True)
class Problem:
    """Why an alias could not be followed; becomes a condition and a Warning event."""

    reason: str
    message: str


@dataclass(frozen=True)
class TrackDecision:
    target: ServedVersion | None  # the version this track should run; None: no workload
    problem: Problem | None = None
    pointed_at: str | None = None  # what the alias points at in the registry, if known


def decide_production(
    *, spec: ModelDeploymentSpec, view: RegistryView, current: ServedVersion | None
) -> TrackDecision:
    if view.error is not None:
        return TrackDecision(target=current, problem=_keep(current, view.error.reason, view.error.message))
    return _follow(spec=spec, alias_target=view.production, current=current, alias=spec.model.alias)


def decide_canary(
    *,
    spec: ModelDeploymentSpec,
    view: RegistryView,
    current: ServedVersion | None,
    production: ServedVersion | None,
) -> TrackDecision:
    if spec.canary is None or not spec.canary_wanted or production is None:
        return TrackDecision(target=None)
    if view.error is not None:
        # No answer: the canary that runs keeps running, at the weight asked.
        return TrackDecision(target=current, problem=Problem(view.error.reason, view.error.message))
    target = view.canary
    if target is None or target.version is None:
        return TrackDecision(target=None)
    decision = _follow(spec=spec, alias_target=target, current=current, alias=spec.canary.alias)
    if decision.target is not None and (decision.target.model, decision.target.version) == (
        production.model,
        production.version,
    ):
        # Same version as production (a promotion, or both aliases on one version): no canary. A
        # version is the pair (model, number): production still on the model the spec named before
        # a rename serves another version, whatever its number.
        return TrackDecision(target=None, problem=decision.problem, pointed_at=decision.pointed_at)
    return decision


def _follow(
    *, spec: ModelDeploymentSpec, alias_target: AliasTarget | None, current: ServedVersion | None, alias: str
) -> TrackDecision:
    model = spec.model.name
    if alias_target is None or alias_target.version is None:
        return TrackDecision(
            target=current,
            problem=_keep(current, reasons.ALIAS_NOT_FOUND, f"model {model!r} has no alias @{alias}"),
        )
    version = alias_target.version
    info = alias_target.info
    if info is None:
        return TrackDecision(
            target=current,
            problem=_keep(
                current,
                reasons.VERSION_NOT_FOUND,
                f"@{alias} points at version {version} of {model!r}, which does not exist",
            ),
            pointed_at=version,
        )
    if not info.ready:
        return TrackDecision(
            target=current,
            problem=_keep(
                current,
                reasons.VERSION_NOT_READY,
                f"@{alias} points at version {version} of {model!r}, which is {info.status}, not READY",
            ),
            pointed_at=version,
        )
    return TrackDecision(target=ServedVersion.of(info), pointed_at=version)


def _keep(current: ServedVersion | None, reason: str, message: str) -> Problem:
    kept = (
        f"; version {current.version} keeps serving" if current else "; nothing is deployed until it is fixed"
    )
    return Problem(reason=reason, message=message + kept)


def is_rollback(old: ServedVersion | None, new: ServedVersion | None) -> bool:
    """A move to a lower version number: the registry's way of saying 'roll back'."""
    if old is None or new is None:
        return False
    try:
        return int(new.version) < int(old.version)
    except ValueError:
        return False
