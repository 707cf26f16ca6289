"""Which requests may share one predict call, and what that call is given.

The invariant of micro-batching: a request's rows reach the model as MLflow parses the request
alone, dtypes and values, so its answer does not depend on which requests share its call. Parsing
the rows of several requests together does not keep it in general: pandas and numpy infer a
column's dtype over every row of it, so `{"x": 1}` alone is int64 and float64 beside `{"x": 2.5}`,
and a schema's datetime column takes its format from the first row. Two ways keep it:

- together (`kinds`): requests whose every column holds values of one of the plain kinds below, the
  same kind in each request, are parsed as one body (`protocol.merge`). A column of only strings,
  only booleans, only integers (int64's range), only floats, or integers and floats, has the same
  dtype whatever its length or its neighbours (the string dtype, bool, int64, float64, float64;
  numpy's strings `<U` of the longest), and each value is converted by itself. A schema casts a
  column value by value (astype, base64), except a datetime column's format inference: such a
  schema parses together only what kinds() cannot tell apart, so its models take the other way.
  tests/unit/serving/test_serving_sharing.py checks this against MLflow's own parse.
- alone, then joined (`signature`, `join`): every other request is parsed by itself, as a lone
  request is, and parsed inputs are joined only where joining converts nothing: frames of the same
  columns and dtypes, arrays of the same dtype and row shape, dicts of such arrays, lists. This
  costs a parse per request (a DataFrame's construction: about 0.1 ms), the first way one per call.

Below the level of a value, a shared call differs from a lone one in two things: a frame's index
numbers the rows of the call (as in MLflow's `spark_udf`, whose premise batching shares: a pyfunc's
prediction for a row does not depend on the other rows of the call), and numpy's fixed-width strings
take the width of the call's longest (`<U5` and `<U9` make `<U9`; every value reads back the same).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from aliasroll.serving.protocol import DF_RECORDS, DF_SPLIT, ParsedRequest

_INT64 = (-(2**63), 2**63)
# The sets of JSON value types whose column has one dtype whatever its length (the docstring).
PLAIN_KINDS = frozenset(
    {
        frozenset({str}),
        frozenset({bool}),
        frozenset({int}),
        frozenset({float}),
        frozenset({int, float}),
    }
)


def kinds(request: ParsedRequest) -> Hashable | None:
    """What must be equal for requests to be parsed together: the batch key (format, columns), the
    kind of every column and the shape of array rows; None when this request is parsed alone."""
    found = _kinds(request)
    return None if found is None else (request.batch_key, found)


def _kinds(request: ParsedRequest) -> Hashable | None:
    payload = request.payload
    if request.batch_key is None or request.params is not None or not isinstance(payload, (list, dict)):
        return None
    if request.format == DF_SPLIT:
        rows = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or not rows:
            return None
        if all(isinstance(row, list) for row in rows):
            width = len(rows[0])
            if any(len(row) != width for row in rows):
                return None
            return _columns(zip(*rows, strict=True), width)
        return _columns([rows], 1)
    if not isinstance(payload, list) or not payload:
        return None
    if request.format == DF_RECORDS or isinstance(payload[0], dict):
        keys = tuple(payload[0])
        if not all(isinstance(row, dict) and tuple(row) == keys for row in payload):
            return None
        found = _columns(([row[key] for row in payload] for key in keys), len(keys))
        return None if found is None else (keys, found)
    # instances / inputs: scalars, or arrays of one shape (a row of features, an image...).
    shape = _shape(payload[0])
    if shape is None:
        return None
    leaves: list[Any] = []
    for row in payload:
        if not _collect(row, shape, leaves):
            return None
    kind = _kind(leaves)
    return None if kind is None else (shape, kind)


def _columns(columns: Iterable[Sequence[Any]], width: int) -> tuple[frozenset[type], ...] | None:
    found: list[frozenset[type]] = []
    for column in columns:
        kind = _kind(column)
        if kind is None:
            return None
        found.append(kind)
    return tuple(found) if len(found) == width else None


def _kind(values: Iterable[Any]) -> frozenset[type] | None:
    types: set[type] = set()
    for value in values:
        kind = type(value)
        if kind is int and not _INT64[0] <= value < _INT64[1]:
            return None
        types.add(kind)
    found = frozenset(types)
    return found if found in PLAIN_KINDS else None


def _shape(value: Any) -> tuple[int, ...] | None:
    """The nested lengths of an array row (() for a scalar); None for one numpy could not shape."""
    if not isinstance(value, list):
        return None if isinstance(value, dict) else ()
    if not value:
        return None
    inner = _shape(value[0])
    return None if inner is None else (len(value), *inner)


def _collect(value: Any, shape: tuple[int, ...], leaves: list[Any]) -> bool:
    """Appends the leaves of `value` if it has exactly `shape`."""
    if not shape:
        if isinstance(value, (list, dict)):
            return False
        leaves.append(value)
        return True
    if not isinstance(value, list) or len(value) != shape[0]:
        return False
    return all(_collect(item, shape[1:], leaves) for item in value)


def signature(parsed: Any, rows: int) -> Hashable | None:
    """What must be equal for inputs parsed alone to be joined; None for an input predicted alone
    (a shape not listed here, or one whose row count is not the `rows` the request was decoded
    with: its predictions could not be told apart from its neighbours')."""
    import numpy as np
    import pandas as pd

    if isinstance(parsed, pd.DataFrame):
        index = parsed.index
        if (
            len(parsed) != rows
            or not parsed.columns.is_unique
            or not isinstance(index, pd.RangeIndex)
            or index.start != 0
            or index.step != 1
        ):
            return None
        return ("frame", tuple(parsed.columns), tuple(parsed.dtypes))
    if isinstance(parsed, np.ndarray):
        return ("array", *_array(parsed)) if parsed.ndim and len(parsed) == rows else None
    if isinstance(parsed, dict) and parsed:
        columns = []
        for key, column in parsed.items():
            if not isinstance(column, np.ndarray) or not column.ndim or len(column) != rows:
                return None
            columns.append((key, *_array(column)))
        return ("columns", tuple(columns))
    if isinstance(parsed, list) and len(parsed) == rows:
        return ("list",)  # joining lists keeps every element as it is
    return None


def _array(array: Any) -> tuple[Any, ...]:
    # Fixed-width strings are told apart by kind, not width (see the module's docstring).
    dtype = array.dtype.kind if array.dtype.kind in "US" else array.dtype
    return dtype, array.shape[1:]


def join(parts: Sequence[Any]) -> Any:
    """One input holding the rows of `parts` in order; `parts` share a `signature`.

    Raises ValueError if joining changed a dtype (it cannot for equal signatures; checked rather
    than assumed, since a pandas release decides what concat keeps)."""
    import numpy as np
    import pandas as pd

    first = parts[0]
    if isinstance(first, pd.DataFrame):
        joined = pd.concat(parts, ignore_index=True)
        if not joined.dtypes.equals(first.dtypes) or not joined.columns.equals(first.columns):
            raise ValueError("joining the frames changed their columns or dtypes")
        return joined
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in first}
    if isinstance(first, list):
        return [row for part in parts for row in part]
    raise ValueError(f"{type(first).__name__} inputs are not joined")


def parses_together(schema: Any) -> bool:
    """Whether a model of this input schema may parse requests of equal kinds together: no schema,
    or one that casts column by column, value by value (no datetime: its format is inferred from a
    column's first value; no arrays, objects or maps, whose values kinds() does not describe)."""
    if schema is None:
        return True
    from mlflow.types.schema import DataType, TensorSpec

    if schema.is_tensor_spec():
        return all(isinstance(spec, TensorSpec) for spec in schema.inputs)
    return all(isinstance(kind, DataType) and kind != DataType.datetime for kind in schema.input_types())
