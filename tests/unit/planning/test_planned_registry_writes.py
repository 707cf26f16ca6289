"""What the operator writes to the registry (planning/registry_writes.py), as tables of named cases:
each alias change a canary policy asks for (a promotion, an abort with removeAlias, none when the
registry did not answer), the outcome tags of an ended run, a tag per served span, the closing tags
of a resource that goes, and keys that name one fact, so every write is idempotent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from aliasroll import reasons
from aliasroll.planning.canary import AliasWrite, CanaryRun, Phase, Registry
from aliasroll.planning.registry_writes import (
    AliasChange,
    RegistryWrite,
    TagVersion,
    canary_writes,
    closing_tags,
    served_tags,
)
from aliasroll.planning.state import EventRecord
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec

OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1", generation=1)
ENDED_AT = datetime(2026, 12, 7, 11, 30, 5, tzinfo=UTC)
STEPS = [{"weight": 10, "duration": "1m"}]
NOW = "2026-12-07T12:00:00Z"
T1, T2 = "2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z"
KEY = "aliasroll.io/served/ml/sentiment"


def spec(*, model: str = "sentiment", alias: str = "production", **canary: Any) -> ModelDeploymentSpec:
    raw: dict[str, Any] = {"model": {"name": model, "alias": alias}, "registry": {"trackingUri": "http://m"}}
    if canary.pop("without_canary", False):
        return parse_spec(raw)
    return parse_spec(raw | {"canary": {"alias": "canary", "steps": STEPS} | canary})


AUTO = spec(promotion="auto")
MANUAL = spec(promotion="manual")
REMOVE = spec(onAbort="removeAlias")
KEEP = spec(onAbort="keepAlias")


def registry(canary_alias: str | None = "3") -> Registry:
    return Registry(canary_alias=canary_alias, production_alias="2", production_settled="2")


def promoting(**fields: Any) -> CanaryRun:
    run: dict[str, Any] = {"promoting_from": "2", "alias_write": AliasWrite.PLANNED} | fields
    return CanaryRun(version="3", phase=Phase.PROMOTING, model="sentiment", **run)


def aborted(**fields: Any) -> CanaryRun:
    run: dict[str, Any] = {
        "ended_at": ENDED_AT,
        "message": "error rate 12.5% above 1%",
        "alias_write": AliasWrite.PLANNED,
    } | fields
    return CanaryRun(version="3", phase=Phase.ABORTED, model="sentiment", **run)


def outcome(
    result: str = "aborted", summary: str = "error rate 12.5% above 1%", **metrics: str
) -> TagVersion:
    tags = {
        "aliasroll.io/canary.outcome": result,
        "aliasroll.io/canary.time": "2026-12-07T11:30:05Z",
        "aliasroll.io/canary.deployment": "ml/sentiment",
        "aliasroll.io/canary.summary": summary,
    } | {f"aliasroll.io/canary.analysis.{name}": text for name, text in metrics.items()}
    return TagVersion("3", tags)


PROMOTION = AliasChange(
    "3",
    "production",
    expect="2",
    to="3",
    event=EventRecord(
        "Normal",
        reasons.ALIAS_MOVED,
        "moved @production from version 2 to 3 in MLflow (every canary step passed)",
    ),
)
REMOVAL = AliasChange(
    "3",
    "canary",
    expect="3",
    to=None,
    event=EventRecord(
        "Normal",
        reasons.ALIAS_REMOVED,
        "removed @canary from aborted version 3 in MLflow (onAbort: removeAlias)",
    ),
    evidence=outcome(),
)

CANARY_WRITES = [
    pytest.param(
        AUTO,
        promoting(),
        registry(),
        [PROMOTION],
        id="an auto promotion moves @production from the version the run began on to the canary's",
    ),
    pytest.param(
        spec(alias="champion", promotion="auto"),
        promoting(),
        registry(),
        [
            AliasChange(
                "3",
                "champion",
                expect="2",
                to="3",
                event=EventRecord(
                    "Normal",
                    reasons.ALIAS_MOVED,
                    "moved @champion from version 2 to 3 in MLflow (every canary step passed)",
                ),
            )
        ],
        id="a promotion moves the alias spec.model.alias names",
    ),
    pytest.param(AUTO, promoting(), None, [], id="no alias moves when the registry did not answer this pass"),
    pytest.param(MANUAL, promoting(), registry(), [], id="a manual promotion is never made by the operator"),
    pytest.param(
        AUTO,
        promoting(alias_write=AliasWrite.ATTEMPTED),
        registry(),
        [],
        id="a promotion status says is being made is never made a second time",
    ),
    pytest.param(
        AUTO,
        promoting(alias_write=AliasWrite.MADE),
        registry(),
        [],
        id="a promotion the registry took is not made again",
    ),
    pytest.param(
        AUTO,
        promoting(alias_write=None),
        registry(),
        [],
        id="a promotion not planned (a human moved the alias) is not made",
    ),
    pytest.param(
        AUTO,
        promoting(promoting_from=None),
        registry(),
        [],
        id="a promotion without the version it moves from is not made",
    ),
    pytest.param(
        AUTO,
        CanaryRun(
            version="3", phase=Phase.AWAITING_PROMOTION, promoting_from="2", alias_write=AliasWrite.PLANNED
        ),
        registry(),
        [],
        id="a run that is not promoting moves no alias",
    ),
    pytest.param(
        REMOVE,
        aborted(),
        registry(),
        [REMOVAL, outcome()],
        id="an abort with removeAlias removes @canary, its outcome written first as evidence",
    ),
    pytest.param(
        REMOVE,
        aborted(),
        None,
        [outcome()],
        id="an abort's removal waits for a registry that answers, its outcome does not",
    ),
    pytest.param(
        REMOVE,
        aborted(),
        registry(canary_alias="4"),
        [outcome()],
        id="an abort never removes @canary once it names another version: a human's move wins",
    ),
    pytest.param(
        REMOVE,
        aborted(alias_write=AliasWrite.ATTEMPTED),
        registry(),
        [outcome()],
        id="an abort's removal status says is being made is never made a second time",
    ),
    pytest.param(
        KEEP, aborted(), registry(), [outcome()], id="an abort with keepAlias writes only its outcome"
    ),
    pytest.param(
        AUTO,
        CanaryRun(version="3", phase=Phase.SUCCEEDED, model="sentiment", ended_at=ENDED_AT, message="done"),
        registry(),
        [outcome("promoted", "done")],
        id="a succeeded run is recorded as promoted",
    ),
    pytest.param(
        KEEP,
        aborted(ended_at=None),
        registry(),
        [],
        id="an ended run without an end time has no outcome to record",
    ),
    pytest.param(
        KEEP,
        CanaryRun(version="3", phase=Phase.ANALYZING, model="sentiment", ended_at=ENDED_AT),
        registry(),
        [],
        id="a run in progress has no outcome to record",
    ),
    pytest.param(
        KEEP,
        aborted(
            measurements=(
                {"metric": "errorRate", "canary": 12.5, "production": 0.0, "bound": 1.0, "verdict": "Failed"},
                {"metric": "latencyP99", "verdict": "Inconclusive"},
                {"canary": 1.0, "verdict": "Passed"},
            )
        ),
        registry(),
        [
            outcome(
                errorRate="canary=12.5 production=0.0 bound=1.0 verdict=Failed",
                latencyP99="verdict=Inconclusive",
            )
        ],
        id="each named metric of the last measurement is tagged with the numbers it has",
    ),
    pytest.param(
        KEEP,
        aborted(message="x" * 5000),
        registry(),
        [outcome(summary="x" * 4000)],
        id="a summary is cut to 4000 characters",
    ),
    pytest.param(
        spec(without_canary=True),
        aborted(),
        registry(),
        [],
        id="without spec.canary nothing is written",
    ),
    pytest.param(REMOVE, None, registry(), [], id="without a run nothing is written"),
]


@pytest.mark.parametrize(("the_spec", "run", "the_registry", "expected"), CANARY_WRITES)
def test_a_canary_run_writes_what_its_policy_asks(
    the_spec: ModelDeploymentSpec,
    run: CanaryRun | None,
    the_registry: Registry | None,
    expected: list[RegistryWrite],
) -> None:
    assert canary_writes(owner=OWNER, spec=the_spec, run=run, registry=the_registry) == expected


def served_span(
    track: str, version: str, start: str | None, end: str | None = None, **more: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"track": track, "version": version, "model": "sentiment"} | more
    return entry | ({"from": start} if start else {}) | ({"to": end} if end else {})


SERVED = [
    pytest.param(
        [served_span("production", "2", T1)],
        [TagVersion("2", {f"{KEY}/production/20261207T100000Z": f"{T1} to now (serving)"})],
        id="an open span is tagged as serving now",
    ),
    pytest.param(
        [served_span("production", "2", T1, T2)],
        [TagVersion("2", {f"{KEY}/production/20261207T100000Z": f"{T1} to {T2}"})],
        id="a closed span is tagged with when it ended",
    ),
    pytest.param(
        [served_span("canary", "3", T2)],
        [TagVersion("3", {f"{KEY}/canary/20261207T110000Z": f"{T2} to now (serving)"})],
        id="a canary span is keyed by its track",
    ),
    pytest.param(
        [
            served_span("production", "2", T1, T2),
            served_span("canary", "3", T2),
            served_span("production", "3", T2),
        ],
        [
            TagVersion("2", {f"{KEY}/production/20261207T100000Z": f"{T1} to {T2}"}),
            TagVersion("3", {f"{KEY}/canary/20261207T110000Z": f"{T2} to now (serving)"}),
            TagVersion("3", {f"{KEY}/production/20261207T110000Z": f"{T2} to now (serving)"}),
        ],
        id="every span gets its own tag, in the history's order",
    ),
    pytest.param(
        [{"track": "production", "version": "2", "from": T1}],
        [TagVersion("2", {f"{KEY}/production/20261207T100000Z": f"{T1} to now (serving)"})],
        id="a span that names no model is spec.model.name's",
    ),
    pytest.param(
        [served_span("production", "7", T1, T2, model="fraud")],
        [TagVersion("7", {f"{KEY}/production/20261207T100000Z": f"{T1} to {T2}"}, model="fraud")],
        id="a closed span of the model served before a rename is tagged in that model",
    ),
    pytest.param(
        [served_span("production", "7", T1, model="fraud")],
        [],
        id="an open span of another model is left to the pass that ends it",
    ),
    pytest.param(
        [served_span("production", "", T1), served_span("production", "2", None)],
        [],
        id="a span without a version or a start is not tagged",
    ),
    pytest.param(
        [served_span("production", "2", "2026-12-07T10:00:00+00:00")],
        [
            TagVersion(
                "2", {f"{KEY}/production/20261207T100000+0000": "2026-12-07T10:00:00+00:00 to now (serving)"}
            )
        ],
        id="a key holds no colon, whatever the time's form: MLflow servers on Windows refuse them",
    ),
    pytest.param([], [], id="an empty history tags nothing"),
]


@pytest.mark.parametrize(("history", "expected"), SERVED)
def test_each_span_of_history_is_tagged_on_its_version(
    history: list[dict[str, Any]], expected: list[TagVersion]
) -> None:
    assert served_tags(owner=OWNER, spec=spec(), history=history) == expected


CLOSING = [
    pytest.param(
        [served_span("production", "2", T1, T2), served_span("production", "3", T2)],
        [
            TagVersion(
                "3",
                {f"{KEY}/production/20261207T110000Z": f"{T2} to {NOW} (resource deleted)"},
                model="sentiment",
            )
        ],
        id="a resource that goes closes its open span, saying why",
    ),
    pytest.param(
        [served_span("production", "3", T1), served_span("canary", "4", T2)],
        [
            TagVersion(
                "3",
                {f"{KEY}/production/20261207T100000Z": f"{T1} to {NOW} (resource deleted)"},
                model="sentiment",
            ),
            TagVersion(
                "4",
                {f"{KEY}/canary/20261207T110000Z": f"{T2} to {NOW} (resource deleted)"},
                model="sentiment",
            ),
        ],
        id="both tracks' open spans are closed",
    ),
    pytest.param(
        [served_span("production", "2", T1, T2)],
        [],
        id="a closed span is not written again",
    ),
    pytest.param(
        [served_span("production", "7", T1, model="fraud")],
        [
            TagVersion(
                "7",
                {f"{KEY}/production/20261207T100000Z": f"{T1} to {NOW} (resource deleted)"},
                model="fraud",
            )
        ],
        id="an open span is closed in the model it names",
    ),
    pytest.param(
        [{"track": "production", "version": "2", "from": T1}],
        [TagVersion("2", {f"{KEY}/production/20261207T100000Z": f"{T1} to {NOW} (resource deleted)"})],
        id="a span that names no model is closed in spec.model.name's",
    ),
    pytest.param(
        [served_span("production", "", T1), served_span("production", "2", None)],
        [],
        id="a span without a version or a start is not closed",
    ),
]


@pytest.mark.parametrize(("history", "expected"), CLOSING)
def test_a_resource_that_goes_closes_its_open_spans(
    history: list[dict[str, Any]], expected: list[TagVersion]
) -> None:
    assert closing_tags(owner=OWNER, history=history, now=NOW, why="resource deleted") == expected


def keys(tags: Sequence[TagVersion]) -> list[tuple[str, str | None, str]]:
    return [(tag.version, tag.model, key) for tag in tags for key in tag.tags]


OPEN = [served_span("production", "2", T1)]
CLOSED = [served_span("production", "2", T1, T2)]
OTHER = ResourceRef(namespace="ml", name="fraud", uid="uid-2", generation=1)


def served_keys(history: list[dict[str, Any]], owner: ResourceRef = OWNER) -> list[Any]:
    return keys(served_tags(owner=owner, spec=spec(), history=history))


def closing_keys(history: list[dict[str, Any]]) -> list[Any]:
    """Closing tags name the span's model outright; served tags leave spec.model.name's as None."""
    return [
        (version, None, key)
        for version, _, key in keys(closing_tags(owner=OWNER, history=history, now=NOW, why="gone"))
    ]


KEYS = [
    pytest.param(
        lambda: served_keys(OPEN),
        lambda: served_keys(CLOSED),
        True,
        id="a span's end overwrites its serving tag: one key for one span",
    ),
    pytest.param(
        lambda: served_keys(OPEN),
        lambda: closing_keys(OPEN),
        True,
        id="a deletion's closing tag overwrites the span's serving tag",
    ),
    pytest.param(
        lambda: served_tags(owner=OWNER, spec=spec(), history=OPEN),
        lambda: served_tags(owner=OWNER, spec=spec(), history=OPEN),
        True,
        id="a repeated pass writes the same tags again",
    ),
    pytest.param(
        lambda: canary_writes(owner=OWNER, spec=REMOVE, run=aborted(), registry=registry()),
        lambda: canary_writes(owner=OWNER, spec=REMOVE, run=aborted(), registry=registry()),
        True,
        id="a restarted operator plans the same alias change and outcome again",
    ),
    pytest.param(
        lambda: served_keys(OPEN),
        lambda: served_keys([served_span("canary", "2", T1)]),
        False,
        id="two tracks serving a version from the same second have their own keys",
    ),
    pytest.param(
        lambda: served_keys(OPEN),
        lambda: served_keys(OPEN, owner=OTHER),
        False,
        id="two resources serving one version have their own keys",
    ),
    pytest.param(
        lambda: served_keys(OPEN),
        lambda: served_keys([served_span("production", "2", T2)]),
        False,
        id="a version served again later is a span of its own",
    ),
]


@pytest.mark.parametrize(("first", "second", "same"), KEYS)
def test_a_tag_key_names_one_fact(first: Callable[[], Any], second: Callable[[], Any], same: bool) -> None:
    assert (first() == second()) is same
