"""Micro-batching never changes a request's answer: a request's rows reach the model as MLflow parses
the request alone, dtypes and values, whichever requests share its predict call (serving/sharing.py).

Against a real pyfunc that echoes what it was given (dtype and value of every cell), and against
MLflow's own parse for the rule that lets requests of equal kinds be parsed together."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from mlflow.types import ColSpec, Schema

from aliasroll.serving.model import ServedModel
from aliasroll.serving.protocol import ParsedRequest, decode, merge
from aliasroll.serving.sharing import join, kinds, parses_together, signature

JSON = "application/json"


def _cells(frame: Any) -> list[str]:
    """Per row, what the model can see of it: every cell's dtype and value."""
    if isinstance(frame, pd.DataFrame):
        return [
            " ".join(f"{column}:{frame[column].dtype}:{value!r}" for column, value in row.items())
            for _, row in frame.iterrows()
        ]
    if isinstance(frame, dict):
        rows = len(next(iter(frame.values())))
        return [" ".join(f"{key}:{_cell(column, i)}" for key, column in frame.items()) for i in range(rows)]
    return [_cell(frame, i) for i in range(len(frame))]


def _cell(array: Any, row: int) -> str:
    # numpy's fixed-width strings: the width is the call's longest (sharing.py), the kind is the type.
    kind = array.dtype.kind if array.dtype.kind in "US" else array.dtype
    value = array[row]
    return f"{kind}:{value.tolist() if isinstance(value, np.ndarray) else value!r}"


# No type hints: with them MLflow hands the model its input unparsed. It warns about that when the
# class is made, under a filter of its own ("once"), so the warning is dropped where it is shown.
_shown, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None
try:

    class Echo(PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return _cells(model_input)

finally:
    warnings.showwarning = _shown


def _served(directory: Path, signature: ModelSignature | None) -> ServedModel:
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(directory), python_model=Echo(), signature=signature, pip_requirements=[]
        )
        return ServedModel(mlflow.pyfunc.load_model(str(directory)), local_path=directory)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    return _served(tmp_path_factory.mktemp("echo"), None)


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    return _served(
        tmp_path_factory.mktemp("dated"),
        ModelSignature(inputs=Schema([ColSpec("datetime", "t")]), outputs=Schema([ColSpec("string")])),
    )


def _requests(*bodies: object) -> list[ParsedRequest]:
    return [decode(orjson.dumps(body), JSON) for body in bodies]


def _alone_and_batched(
    model: ServedModel, group: list[ParsedRequest]
) -> tuple[list[Any], list[Any], list[int]]:
    alone = [orjson.loads(model.answer(request)) for request in group]
    outcome = model.answer_group(group)
    batched = [
        answer if isinstance(answer, Exception) else orjson.loads(answer) for answer in outcome.answers
    ]
    return alone, batched, outcome.calls


# Requests of one batch key (format and columns) whose values MLflow parses differently alone and
# together; every one of them changed a request's answer when its rows were parsed with its neighbours'.
DIFFERENT_PARSES = [
    pytest.param(
        [{"dataframe_records": [{"x": 1, "id": "7"}]}, {"dataframe_records": [{"x": 2.5, "id": None}]}],
        [1, 1],
        id="review-14-int-beside-float-and-null",
    ),
    pytest.param(
        [
            {"dataframe_split": {"columns": ["x"], "data": [[1]]}},
            {"dataframe_split": {"columns": ["x"], "data": [[2.5]]}},
        ],
        [1, 1],
        id="split-int-beside-float",
    ),
    pytest.param(
        [{"dataframe_records": [{"x": 1}, {"x": 2.5}]}, {"dataframe_records": [{"x": 3}]}],
        [1, 1],
        id="int-beside-a-request-of-ints-and-floats",
    ),
    pytest.param(
        [{"dataframe_records": [{"s": "a"}]}, {"dataframe_records": [{"s": None}]}],
        [1, 1],
        id="string-beside-null",
    ),
    pytest.param(
        [{"dataframe_records": [{"b": True}]}, {"dataframe_records": [{"b": 0}]}],
        [1, 1],
        id="bool-beside-int",
    ),
    pytest.param(
        [{"dataframe_records": [{"n": 1}]}, {"dataframe_records": [{"n": 2**63}]}],
        [1, 1],
        id="int64-beside-uint64",
    ),
    pytest.param(
        [{"inputs": [[1, 2]]}, {"inputs": [[1.5, 2]]}], [1, 1], id="inputs-int-row-beside-float-row"
    ),
    pytest.param(
        [{"instances": [{"a": 1}]}, {"instances": [{"a": "one"}]}], [1, 1], id="instances-int-beside-string"
    ),
    pytest.param(
        [
            {"dataframe_records": [{"x": None}]},
            {"dataframe_records": [{"x": 1}]},
            {"dataframe_records": [{"x": None}]},
        ],
        [2, 1],  # the two nulls parse alike alone: joined, one call
        id="null-beside-int-nulls-joined",
    ),
]


@pytest.mark.parametrize(("bodies", "calls"), DIFFERENT_PARSES)
def test_a_request_gets_the_answer_it_gets_alone(
    echo: ServedModel, bodies: list[object], calls: list[int]
) -> None:
    alone, batched, made = _alone_and_batched(echo, _requests(*bodies))
    assert batched == alone
    assert sorted(made, reverse=True) == calls


@pytest.mark.filterwarnings("ignore:Parsing dates:UserWarning")
def test_a_datetime_column_parses_alone_its_format_is_inferred_from_its_first_value(
    dated: ServedModel,
) -> None:
    # Parsed together, 05/06/2024 took the format of 13/02/2024 (day first): June 5th, not May 6th.
    assert not dated._parses_together
    group = _requests(
        {"dataframe_records": [{"t": "13/02/2024"}]}, {"dataframe_records": [{"t": "05/06/2024"}]}
    )
    alone, batched, calls = _alone_and_batched(dated, group)
    assert batched == alone
    assert "2024-05-06" in alone[1]["predictions"][0]
    assert calls == [2]  # parsed alone, both datetime64[ns]: joined into one call


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"dataframe_split": {"columns": ["text"], "data": [["this is great"]]}}, id="split-strings"
        ),
        pytest.param({"dataframe_records": [{"x": 1, "y": 2.5, "ok": True}]}, id="records-of-plain-kinds"),
        pytest.param({"inputs": [[0.5, 1, 2]]}, id="inputs-feature-rows-ints-and-floats"),
        pytest.param({"inputs": ["some text"]}, id="inputs-strings"),
    ],
)
def test_requests_of_the_same_kinds_share_one_call_parsed_together(
    echo: ServedModel, body: dict[str, Any]
) -> None:
    group = _requests(*([body] * 8))
    assert len({kinds(request) for request in group}) == 1
    assert kinds(group[0]) is not None
    alone, batched, calls = _alone_and_batched(echo, group)
    assert batched == alone
    assert calls == [8]


def test_a_failing_shared_call_is_made_again_request_by_request(echo: ServedModel) -> None:
    group = _requests(*([{"dataframe_records": [{"x": 1}]}] * 3))
    original = echo.pyfunc.predict
    seen: list[int] = []

    def fails_in_a_batch(data: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(data))
        if len(data) > 1:
            raise ValueError("this model fails on batches")
        return original(data, *args, **kwargs)

    echo.pyfunc.predict = fails_in_a_batch
    try:
        outcome = echo.answer_group(group)
    finally:
        echo.pyfunc.predict = original
    assert seen == [3, 1, 1, 1]  # tried once together, then alone, not joined again
    assert outcome.calls == [1, 1, 1]
    assert all(isinstance(answer, bytes) for answer in outcome.answers)


def test_parsing_together_is_for_schemas_that_cast_value_by_value() -> None:
    assert parses_together(None)
    assert parses_together(Schema([ColSpec("string", "s"), ColSpec("long", "n")]))
    assert parses_together(Schema([ColSpec("string")]))
    assert not parses_together(Schema([ColSpec("datetime", "t")]))


# The rule that lets requests be parsed together, checked against MLflow's own parse: for requests of
# one batch key and equal kinds(), the rows of the merged body parse as each request alone, or the
# merged body fails to parse (each request is then parsed alone).

_INTS = st.one_of(st.integers(-3, 3), st.integers(min_value=-(2**63), max_value=2**64 - 1))  # orjson's ints
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_STRINGS = st.sampled_from(["", "a", "7", "2.5", "true", "2024-01-02", "05/06/2024", "héllo wörld"])
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _STRINGS)
# What one column holds in every request of a group: mostly one kind, so that groups parse together.
_COLUMNS = st.sampled_from(
    [
        _STRINGS,
        st.booleans(),
        _INTS,
        _FLOATS,
        st.one_of(_INTS, _FLOATS),
        _SCALARS,
        st.one_of(st.none(), _INTS),
    ]
)
_SCHEMAS = [None, "string", "long", "double", "boolean", "integer", "float"]


def _slices(parsed: Any, rows: list[int]) -> list[Any]:
    out, start = [], 0
    for count in rows:
        if isinstance(parsed, pd.DataFrame):
            out.append(parsed.iloc[start : start + count].reset_index(drop=True))
        elif isinstance(parsed, dict):
            out.append({key: column[start : start + count] for key, column in parsed.items()})
        else:
            out.append(parsed[start : start + count])
        start += count
    return out


def _assert_same(batched: Any, alone: Any) -> None:
    assert type(batched) is type(alone)
    if isinstance(alone, pd.DataFrame):
        pd.testing.assert_frame_equal(batched, alone, check_exact=True)
    elif isinstance(alone, dict):
        assert list(batched) == list(alone)
        for key in alone:
            _assert_same(batched[key], alone[key])
    else:
        assert _cells(batched) == _cells(alone)
        np.testing.assert_array_equal(batched, alone, strict=alone.dtype.kind not in "US")


@st.composite
def _groups(draw: st.DrawFn) -> tuple[list[ParsedRequest], Schema | None]:
    fmt = draw(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"]))
    columns = draw(st.integers(1, 2))
    names = ["a", "b"][:columns]
    kind = draw(st.sampled_from(_SCHEMAS))
    schema = None if kind is None else Schema([ColSpec(kind, name) for name in names])
    if fmt in ("instances", "inputs"):
        schema = None if kind is None else Schema([ColSpec(kind)])
    values = [draw(_COLUMNS) for _ in names]
    if fmt in ("instances", "inputs"):
        values = values[:1] * columns  # an array's cells are one column
    bodies = []
    for _ in range(draw(st.integers(2, 4))):
        rows = draw(st.integers(1, 3))
        cells = [[draw(value) for value in values] for _ in range(rows)]
        if fmt == "dataframe_split":
            bodies.append({fmt: {"columns": names, "data": cells}})
        elif fmt == "dataframe_records":
            bodies.append({fmt: [dict(zip(names, row, strict=True)) for row in cells]})
        elif columns == 1:
            bodies.append({fmt: [row[0] for row in cells]})
        else:  # rows of two features
            bodies.append({fmt: cells})
    return _requests(*bodies), schema


def _parse(body: dict[str, Any], schema: Schema | None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return infer_and_parse_data(body, schema)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_groups())
def test_requests_of_equal_kinds_parse_together_as_they_parse_alone(
    drawn: tuple[list[ParsedRequest], Any],
) -> None:
    group, schema = drawn
    together = [
        request for request in group if kinds(request) is not None and kinds(request) == kinds(group[0])
    ]
    if len(together) < 2:
        return
    try:
        merged = _parse(merge(together), schema)
    except Exception:
        event("the merged body does not parse (its requests are then parsed alone)")
        return
    event(f"compared {len(together)} requests parsed together ({'a' if schema else 'no'} schema)")
    for request, rows in zip(together, _slices(merged, [r.rows or 0 for r in together]), strict=True):
        _assert_same(rows, _parse({request.format or "": request.payload}, schema))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_groups())
def test_inputs_parsed_alone_are_joined_unchanged(drawn: tuple[list[ParsedRequest], Any]) -> None:
    group, schema = drawn
    parsed = []
    for request in group:
        try:
            parsed.append((request, _parse({request.format or "": request.payload}, schema)))
        except Exception:
            continue
    found = [(request, data) for request, data in parsed if signature(data, request.rows or 0) is not None]
    if not found:
        return
    first = signature(found[0][1], found[0][0].rows or 0)
    same = [(request, data) for request, data in found if signature(data, request.rows or 0) == first]
    event(f"compared {len(same)} inputs parsed alone and joined")
    joined = join([data for _, data in same])
    for (_, alone), rows in zip(
        same, _slices(joined, [request.rows or 0 for request, _ in same]), strict=True
    ):
        _assert_same(rows, alone)
