"""Status conditions as the Kubernetes API conventions define them.

lastTransitionTime moves only when `status` flips, so `kubectl describe` tells how long a resource
has been in its state; reason and message may change without a transition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"


class ConditionStatus(TypedDict):
    """One entry of status.conditions, as written."""

    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def merge(
    previous: Iterable[Mapping[str, Any]],
    wanted: Iterable[Condition],
    *,
    now: str,
    observed_generation: int,
) -> list[ConditionStatus]:
    """New condition list in `wanted` order, keeping lastTransitionTime where status did not flip."""
    before = {str(item.get("type")): item for item in previous}
    merged: list[ConditionStatus] = []
    for condition in wanted:
        old = before.get(condition.type)
        unchanged = (
            old is not None and old.get("status") == condition.status and old.get("lastTransitionTime")
        )
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": old["lastTransitionTime"] if unchanged and old else now,
                "observedGeneration": observed_generation,
            }
        )
    return merged


def find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((item for item in conditions if item.get("type") == type_), None)
