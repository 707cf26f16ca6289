"""Predictions read back from MLflow's scoring answers: what a version answered, row by row, for its
prediction distribution and for comparing production's answer with the shadow's (mirror.py). Pure.

An answer is `{"predictions": ...}` (what this server and `mlflow models serve` send) or a bare list.
Its predictions are read as rows of cells, each cell a number or a label:
- a list of scalars: one cell a row (`[0.2, 0.9]`, `["cat", "dog"]`);
- a list of objects: the object's values by key (`[{"label": "cat"}]`, a DataFrame's records);
- a list of lists of scalars: the values by position (`[[0.1, 0.9]]`, class probabilities);
- an object of equal-length lists: the columns zipped into rows (`{"label": [...], "score": [...]}`).
Numbers (JSON integers and floats) are numbers; strings, booleans and null are labels. Any other
shape is not row-shaped: two such answers are compared as a whole, exactly, and count in no
distribution. Nothing read here is logged; only the bounded label set (`LabelCap`) becomes a
metric label, and only for the server's own predictions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

Cell = float | str
# A row: (name, cell) pairs; the name is "" for a scalar, the position or the key otherwise.
Row = tuple[tuple[str, Cell], ...]

# Labels longer than this are cut before they are counted (a metric label value).
LABEL_LENGTH = 64
# The distinct labels a version counts by name; the others count as OTHER.
LABEL_LIMIT = 20
OTHER = "other"


class Unparseable(Exception):
    """An answer that is not MLflow's scoring answer (not JSON, or no predictions in it)."""


@dataclass(frozen=True)
class Comparison:
    agree: bool
    # The absolute difference of every pair of finite numbers compared, in order.
    differences: tuple[float, ...] = ()


def predictions_of(body: bytes) -> Any:
    """The predictions of a scoring answer; raises Unparseable."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Unparseable("not JSON") from None
    if isinstance(decoded, dict) and "predictions" in decoded:
        return decoded["predictions"]
    if isinstance(decoded, list):
        return decoded
    raise Unparseable("no predictions")


def rows_of(predictions: Any) -> list[Row] | None:
    """The predictions as rows of cells; None when they are not row-shaped."""
    if isinstance(predictions, dict):
        return _columns(predictions)
    if not isinstance(predictions, list):
        return None
    rows: list[Row] = []
    for item in predictions:
        row = _row(item)
        if row is None:
            return None
        rows.append(row)
    return rows


def compare(own: Any, shadow: Any, tolerance: float) -> Comparison:
    """Whether the shadow's predictions agree with production's: the same rows, the same names, labels
    equal and numbers within `tolerance` (absolute). The work is bounded by production's own answer:
    a shadow's answer of another length or shape is told apart before it is read through."""
    own_rows = rows_of(own)
    if own_rows is None:
        return Comparison(_equal(own, shadow))
    shadow_items = _items(shadow, len(own_rows))
    if shadow_items is None:
        return Comparison(False)
    agree = True
    differences: list[float] = []
    for own_row, item in zip(own_rows, shadow_items, strict=True):
        shadow_row = _row(item) if _size(item) == len(own_row) else None
        if shadow_row is None or [name for name, _ in shadow_row] != [name for name, _ in own_row]:
            agree = False
            continue
        for (_, mine), (_, theirs) in zip(own_row, shadow_row, strict=True):
            if not _cells_agree(mine, theirs, tolerance, differences):
                agree = False
    return Comparison(agree, tuple(differences))


def _cells_agree(mine: Cell, theirs: Cell, tolerance: float, differences: list[float]) -> bool:
    if isinstance(mine, float) and isinstance(theirs, float):
        difference = abs(mine - theirs)
        if math.isfinite(difference):
            differences.append(difference)
            return difference <= tolerance
        return mine == theirs  # the same infinity agrees; nan never does
    return mine == theirs


def _equal(own: Any, shadow: Any) -> bool:
    try:
        return bool(own == shadow)
    except RecursionError:  # deeply nested: orjson allows more depth than comparing does
        return False


def _items(predictions: Any, count: int) -> list[Any] | None:
    """The shadow's predictions as `count` row items, or None when they cannot be."""
    if isinstance(predictions, list):
        return predictions if len(predictions) == count else None
    if isinstance(predictions, dict):
        columns = _columns(predictions) if _column_length(predictions) == count else None
        return [dict(row) for row in columns] if columns is not None else None
    return None


def _size(item: Any) -> int:
    return len(item) if isinstance(item, list | dict) else 1


def _row(item: Any) -> Row | None:
    if isinstance(item, dict):
        cells = [(str(key), _cell(value)) for key, value in item.items()]
    elif isinstance(item, list):
        cells = [(str(index), _cell(value)) for index, value in enumerate(item)]
    else:
        cells = [("", _cell(item))]
    if any(cell is None for _, cell in cells):
        return None
    return tuple((name, cell) for name, cell in cells if cell is not None)


def _cell(value: Any) -> Cell | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    return None


def _column_length(predictions: dict[str, Any]) -> int | None:
    lengths = {len(column) if isinstance(column, list) else -1 for column in predictions.values()}
    return lengths.pop() if len(lengths) == 1 and -1 not in lengths else None


def _columns(predictions: dict[str, Any]) -> list[Row] | None:
    """{"a": [...], "b": [...]} as rows {"a": a_i, "b": b_i}; None unless every value is a list of
    the same length."""
    if _column_length(predictions) is None:
        return None
    names = [str(name) for name in predictions]
    rows: list[Row] = []
    for values in zip(*predictions.values(), strict=True):
        row = _row(dict(zip(names, values, strict=True)))
        if row is None:
            return None
        rows.append(row)
    return rows


def single_values(predictions: Any) -> Iterator[Cell]:
    """The value of every row that holds one: what a prediction distribution counts. The rows of
    `rows_of`, read without building them (this runs on every answer)."""
    if isinstance(predictions, dict):
        if len(predictions) != 1:
            return
        (predictions,) = predictions.values()
        if not isinstance(predictions, list):
            return
    elif not isinstance(predictions, list):
        return
    for item in predictions:
        if isinstance(item, dict | list):
            if len(item) != 1:
                continue
            (item,) = item.values() if isinstance(item, dict) else item
        cell = _cell(item)
        if cell is not None:
            yield cell


class LabelCap:
    """The first LABEL_LIMIT distinct labels counted by name (each cut to LABEL_LENGTH), the rest as
    OTHER: a label set that stays bounded whatever a model answers."""

    def __init__(self, limit: int = LABEL_LIMIT) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def name(self, label: str) -> str:
        label = label[:LABEL_LENGTH]
        if label in self._known:
            return label
        if len(self._known) < self._limit:
            self._known.add(label)
            return label
        return OTHER
