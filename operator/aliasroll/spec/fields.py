"""Readers of one value of a ModelDeployment body: each checks its value as the CRD does and raises
InvalidSpec naming the field's path (a resource may predate the installed CRD)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aliasroll.errors import InvalidSpec

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, *, field_path: str) -> float:
    """Parses a Go-style duration (`30s`, `1m30s`, `500ms`) into seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise InvalidSpec(field_path, f"{text!r} is not a duration; write it like 30s, 2m or 1m30s")
    return total


def number(value: object, *, path: str, low: float, high: float | None = None) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        within = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidSpec(path, f"must be a number {within}, got {value!r}")
    return float(value)


def integer(value: object, *, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(path, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def string(parent: Mapping[str, Any], key: str, *, path: str, required: bool) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidSpec(path, "is required and must be a non-empty string")
    return value


def json_object(value: object, *, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(path, "must be an object")
    return value


def json_list(value: object, *, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidSpec(path, "must be a list")
    return list(value)


def string_map(value: object, *, path: str) -> Mapping[str, str]:
    mapping = json_object(value, path=path)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise InvalidSpec(path, f"the value of {key} must be a string")
    return mapping


def frozen(value: Any) -> Any:
    """A read-only deep copy of a JSON value: the spec must not change under the planner (`thawed`,
    in spec/types.py, turns it back into plain dicts and lists for a manifest)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: frozen(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen(item) for item in value)
    return value
