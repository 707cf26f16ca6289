"""The status TypedDicts (planning/status.py) and the CRD's status schema name the same keys, at
every level: a key the planner writes that the schema lacks would be pruned by the API server, and
a key in the schema the types lack is one mypy cannot check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest
import yaml

from aliasroll.planning import status

CRD = Path(__file__).resolve().parents[3] / "crds" / "modeldeployments.aliasroll.io.yaml"


def schema_status() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["status"]  # type: ignore[no-any-return]


def differences(typed: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Keys in one and not the other, from `typed` (a TypedDict) down."""
    hints = get_type_hints(typed)
    properties = schema.get("properties") or {}
    found = [
        f"{path}.{key}: in the TypedDict, not in the CRD" for key in sorted(set(hints) - set(properties))
    ]
    found += [
        f"{path}.{key}: in the CRD, not in the TypedDict" for key in sorted(set(properties) - set(hints))
    ]
    for key in sorted(set(hints) & set(properties)):
        hint, child = hints[key], properties[key]
        if get_origin(hint) is list:
            (hint,) = get_args(hint)
            child = child.get("items") or {}
        if is_typeddict(hint):
            found += differences(hint, child, f"{path}.{key}")
    return found


def test_the_status_types_name_the_schema_keys_at_every_level() -> None:
    assert differences(status.ModelDeploymentStatus, schema_status(), "status") == []


@pytest.mark.parametrize(
    ("typed", "schema_path"),
    [
        pytest.param(status.TrackStatus, ("production",), id="the production track"),
        pytest.param(status.LastCanaryStatus, ("lastCanary",), id="the last canary"),
        pytest.param(status.FastSwitchStatus, ("fastSwitch",), id="the fast switch"),
        pytest.param(status.VersionRef, ("fastSwitch", "from"), id="the fast switch's versions"),
        pytest.param(status.BakeStatus, ("bake",), id="the bake"),
    ],
)
def test_each_part_is_the_part_of_the_schema_it_is_written_to(
    typed: Any, schema_path: tuple[str, ...]
) -> None:
    schema = schema_status()
    for key in schema_path:
        schema = schema["properties"][key]
    assert differences(typed, schema, ".".join(schema_path)) == []


def test_the_walk_compares_something() -> None:
    # A schema path that moved would leave nothing to compare and the tests above would pass on nothing.
    assert len(schema_status()["properties"]) >= 10
    assert "from" in get_type_hints(status.HistorySpan)  # declared in the functional form
    assert {"from", "to"} <= set(get_type_hints(status.FastSwitchStatus))  # and this one too


def test_the_warm_list_s_items_are_compared() -> None:
    # status.warm is a list: the walk compares its TypedDict with the schema of its items.
    schema = schema_status()["properties"]["warm"]
    assert differences(status.WarmVersionStatus, schema["items"], "warm") == []
    assert set(get_type_hints(status.WarmVersionStatus)) == set(schema["items"]["properties"])
