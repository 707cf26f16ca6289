"""Parsing a ModelDeployment spec: the CRD's defaults, and clear errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from aliasroll.errors import InvalidSpec
from aliasroll.spec import RouterKind, parse_duration, parse_spec

MINIMAL: dict[str, Any] = {"model": {"name": "sentiment"}, "registry": {"trackingUri": "http://mlflow:5000"}}


def test_defaults_match_the_crd() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.model.alias == "production"
    assert spec.registry.poll_seconds == 30
    assert spec.replicas == 1
    assert spec.serving.port == 8080
    assert spec.traffic.router is RouterKind.REPLICAS
    assert spec.canary is None
    assert not spec.canary_wanted


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, field_path="x") == seconds


BAD = [
    ("model missing", {"registry": MINIMAL["registry"]}, "spec.model"),
    ("blank model name", {**MINIMAL, "model": {"name": " "}}, "spec.model.name"),
    ("reserved alias", {**MINIMAL, "model": {"name": "m", "alias": "v3"}}, "spec.model.alias"),
    ("alias with a dot", {**MINIMAL, "model": {"name": "m", "alias": "a.b"}}, "spec.model.alias"),
    ("ftp registry", {**MINIMAL, "registry": {"trackingUri": "ftp://x"}}, "spec.registry.trackingUri"),
    (
        "bad poll interval",
        {**MINIMAL, "registry": {"trackingUri": "http://x", "pollInterval": "soon"}},
        "spec.registry.pollInterval",
    ),
    (
        "poll interval too short",
        {**MINIMAL, "registry": {"trackingUri": "http://x", "pollInterval": "10ms"}},
        "spec.registry.pollInterval",
    ),
    ("weight above 100", {**MINIMAL, "canary": {"weight": 101}}, "spec.canary.weight"),
    ("negative weight", {**MINIMAL, "canary": {"weight": -1}}, "spec.canary.weight"),
    (
        "canary alias = production alias",
        {**MINIMAL, "canary": {"alias": "production", "weight": 5}},
        "spec.canary.alias",
    ),
    ("unknown router", {**MINIMAL, "traffic": {"router": "istio"}}, "spec.traffic.router"),
    ("negative replicas", {**MINIMAL, "replicas": -1}, "spec.replicas"),
    ("replicas as text", {**MINIMAL, "replicas": "2"}, "spec.replicas"),
]


@pytest.mark.parametrize(("name", "raw", "field"), BAD, ids=[case[0] for case in BAD])
def test_bad_fields_are_named(name: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    assert caught.value.field_path == field
    assert str(caught.value).startswith(field)
