"""MLflow's scoring protocol: request bodies in, `{"predictions": ...}` out, errors as MLflow shapes them.

Accepted exactly as `mlflow models serve` accepts them: JSON objects with one of `dataframe_split`,
`dataframe_records`, `instances` or `inputs` (plus optional `params`), and `text/csv`. Parsing into
pandas/numpy is MLflow's own (`infer_and_parse_data`, `parse_csv_input`), so existing clients get the
same semantics; what differs is that JSON is decoded with orjson, and that requests in the same
shape (`batch_key`) can share a predict call, without changing what any of them parses to
(sharing.py decides how: their rows parsed together by `merge`, or each parsed alone and joined).

Errors carry an HTTP status and a message that says what to fix; they never echo the payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
PARAMS = "params"
CONTENT_JSON = "application/json"
CONTENT_CSV = "text/csv"
_MESSAGE_LIMIT = 500


# Whose fault a failed scoring request is, as the metrics count it (a closed set: a label value).
# input: the client's request (4xx); model: the model raised, or returned what cannot be serialized
# (500); server: the server's own state or limits (503 while loading, 504 past the deadline, a bug).
FailureKind = Literal["input", "model", "server"]


class RequestError(Exception):
    """A request the server will not score: `status` 4xx for the client's faults, 5xx for ours.

    `kind` defaults from the status; a model's own failure says "model" explicitly."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_code: str = "BAD_REQUEST",
        kind: FailureKind | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.kind: FailureKind = kind or ("input" if status < 500 else "server")

    def body(self) -> bytes:
        # The shape of MLflow's MlflowException.serialize_as_json, without a stack trace.
        return orjson.dumps({"error_code": self.error_code, "message": shorten(str(self))})


@dataclass(frozen=True)
class ParsedRequest:
    """A decoded request before MLflow's parse: `rows` is None when it cannot join a batch."""

    content_type: str
    format: str | None  # one of FORMATS for JSON
    payload: Any  # the value under the format key, or the CSV text
    params: dict[str, Any] | None
    rows: int | None
    batch_key: tuple[Any, ...] | None  # requests with equal keys may share a predict call


def decode(body: bytes, content_type: str | None) -> ParsedRequest:
    """Checks the content type and decodes the body; raises RequestError saying what is wrong."""
    mime, charset, unknown = _content_type(content_type)
    if charset != "utf-8":
        raise RequestError(415, "The scoring server only supports UTF-8", error_code="BAD_REQUEST")
    if unknown:
        raise RequestError(415, f"Unrecognized content type parameters: {', '.join(sorted(unknown))}.")
    if mime == CONTENT_CSV:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "Ensure that input is a valid UTF-8 encoded string.") from None
        return ParsedRequest(CONTENT_CSV, None, text, None, None, None)
    if mime != CONTENT_JSON:
        raise RequestError(
            415,
            f"This predictor only supports the following content types: {CONTENT_JSON}, {CONTENT_CSV}. "
            f"Got '{content_type or ''}'.",
        )
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(
            400, f"Ensure that input is a valid JSON formatted string. Error: {error}"
        ) from None
    if not isinstance(decoded, dict):
        kind = "a list" if isinstance(decoded, list) else f"a {type(decoded).__name__}"
        raise RequestError(400, f"{_required()}. Received {kind}.")
    keys = [key for key in decoded if key in FORMATS]
    if len(keys) != 1:
        raise RequestError(400, f"{_required()}. Received dictionary with input fields: {sorted(decoded)}.")
    fmt = keys[0]
    params = decoded.get(PARAMS)
    if params is not None and not isinstance(params, dict):
        raise RequestError(400, f"'{PARAMS}' must be a JSON object of parameter names to values.")
    payload = decoded[fmt]
    rows, batch_key = _batch_shape(fmt, payload) if params is None else (None, None)
    return ParsedRequest(CONTENT_JSON, fmt, payload, params, rows, batch_key)


def merge(requests: Sequence[ParsedRequest]) -> dict[str, Any]:
    """One request body holding the rows of several requests of the same batch key, in order.

    Parsing it gives each request's rows what they parse to alone only when sharing.py says so."""
    first = requests[0]
    if first.format == DF_SPLIT:
        columns = first.payload.get("columns")
        data = [row for request in requests for row in request.payload["data"]]
        return {DF_SPLIT: {"columns": columns, "data": data} if columns is not None else {"data": data}}
    return {first.format or INPUTS: [row for request in requests for row in request.payload]}


def _batch_shape(fmt: str, payload: Any) -> tuple[int | None, tuple[Any, ...] | None]:
    """Row count and merge key of row-shaped payloads; (None, None) for shapes that are not merged."""
    if fmt == DF_SPLIT:
        if not isinstance(payload, dict) or "index" in payload or not isinstance(payload.get("data"), list):
            return None, None
        columns = payload.get("columns")
        return len(payload["data"]), (fmt, tuple(columns) if isinstance(columns, list) else None)
    if fmt in (DF_RECORDS, INSTANCES, INPUTS) and isinstance(payload, list) and payload:
        # Records (dicts) merge with records of the same keys; scalars and lists with their own kind.
        head = payload[0]
        shape = ("dict", tuple(head)) if isinstance(head, dict) else (type(head).__name__,)
        if all(_same_shape(item, shape) for item in payload):
            return len(payload), (fmt, shape)
    return None, None


def _same_shape(item: Any, shape: tuple[Any, ...]) -> bool:
    if shape[0] == "dict":
        return isinstance(item, dict) and tuple(item) == shape[1]
    return bool(type(item).__name__ == shape[0])


def _content_type(header: str | None) -> tuple[str, str, set[str]]:
    parts = [part.strip() for part in (header or "").split(";")]
    mime = parts[0].lower()
    parameters = {
        key.strip().lower(): value.strip() for key, _, value in (p.partition("=") for p in parts[1:] if p)
    }
    charset = parameters.pop("charset", "utf-8").lower()
    return mime, charset, set(parameters)


def _required() -> str:
    return f"The input must be a JSON dictionary with exactly one of the input fields {set(FORMATS)}"


def shorten(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def encode_predictions(jsonable: Any) -> bytes:
    """`{"predictions": ...}` as MLflow answers it (numpy values serialized natively)."""
    return orjson.dumps({"predictions": jsonable}, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)


def _fallback(value: Any) -> Any:
    # What orjson does not know natively (pandas Timestamps, numpy datetimes, sets, bytes...):
    # MLflow's own encoder decides, so answers match the reference server.
    from mlflow.utils.proto_json_utils import NumpyEncoder

    return NumpyEncoder().default(value)
