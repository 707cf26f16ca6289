"""The pinned model: downloaded once into scratch, loaded, warmed up, then scored request by request
or batch by batch. Everything here runs in worker threads, never on the event loop."""

from __future__ import annotations

import inspect
import logging
import os
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from aliasroll.serving.config import ServingConfig
from aliasroll.serving.dependencies import Installer
from aliasroll.serving.protocol import (
    CONTENT_CSV,
    INPUTS,
    ParsedRequest,
    RequestError,
    encode_predictions,
    merge,
    shorten,
)
from aliasroll.serving.redaction import redact, secret_values
from aliasroll.serving.requirements import DependencyError, Policy
from aliasroll.serving.sharing import join, kinds, parses_together, signature

log = logging.getLogger("aliasroll.serving")


class ModelLoadError(Exception):
    """The version could not be downloaded or loaded: the process must exit non-zero."""


# MLflow raises these for input that does not fit a model, with its default error code (500).
_TYPE_HINT_VALIDATION = "Failed to validate the input data against the type hint"


def prediction_failure(error: Exception) -> RequestError:
    """What a request answers when the model's predict call raised `error`.

    The call runs MLflow's input checks before the model's own code: their MlflowExceptions (schema
    enforcement, params, type hints, pydantic validation) are the input's fault, a 4xx saying what
    does not fit. Anything else the model raised is the server's failure: 500, counted as the
    model's, with a message that quotes nothing of the exception (its text may hold input or
    credentials; the log has it, redacted).
    """
    from mlflow.exceptions import MlflowException

    if isinstance(error, RequestError):
        return error
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        if 400 <= status < 500 or _is_input_validation(error):
            return RequestError(
                status if 400 <= status < 500 else 400,
                f"The input does not fit the model: {error.message}",
                kind="input",
            )
    return RequestError(
        500,
        f"The model failed on this request: it raised {type(error).__name__}. "
        "The server's log has the traceback.",
        error_code="INTERNAL_ERROR",
        kind="model",
    )


def _is_input_validation(error: Any) -> bool:
    import pydantic

    return str(error.message).startswith(_TYPE_HINT_VALIDATION) or isinstance(
        error.__cause__, pydantic.ValidationError
    )


@dataclass
class BatchOutcome:
    """Per-request answers of one group, and the requests each predict call made for it scored
    (a request refused before its predict call, for input that does not parse, is in none)."""

    answers: list[bytes | RequestError]
    calls: list[int]


_UNPARSED: Any = object()  # a request of a group not parsed alone (yet)


def _by(indices: Iterable[int], key: Callable[[int], Hashable | None]) -> list[list[int]]:
    """`indices` grouped by `key` in order, groups of two or more; a None key groups nothing."""
    found: dict[Hashable, list[int]] = {}
    for index in indices:
        value = key(index)
        if value is not None:
            found.setdefault(value, []).append(index)
    return [members for members in found.values() if len(members) > 1]


class ServedModel:
    def __init__(self, pyfunc: Any, *, local_path: Path) -> None:
        from mlflow.models import Model

        self.pyfunc = pyfunc
        self.local_path = local_path
        self.input_schema = pyfunc.metadata.get_input_schema()
        self.accepts_params = "params" in inspect.signature(pyfunc.predict).parameters
        # Models whose signature comes from type hints take `inputs` as it is, unparsed (MLflow's rule).
        from_hints = getattr(pyfunc.metadata, "_is_signature_from_type_hint", None)
        self.unparsed_inputs = bool(from_hints()) if callable(from_hints) else False
        # Unparsed inputs cost nothing to parse alone (and are joined as lists).
        self._parses_together = not self.unparsed_inputs and parses_together(self.input_schema)
        self.input_example = Model.load(str(local_path)).load_input_example(str(local_path))
        self._secrets = secret_values(os.environ)

    @classmethod
    def load(cls, config: ServingConfig) -> ServedModel:
        """Downloads the pinned version into scratch and loads it (MLflow client + credentials from env)."""
        config.scratch_dir.mkdir(parents=True, exist_ok=True)
        # The root filesystem is read-only in the image: every temporary file goes to scratch.
        os.environ.setdefault("TMPDIR", str(config.scratch_dir))
        started = time.monotonic()
        try:
            import mlflow.artifacts
            import mlflow.pyfunc

            destination = config.scratch_dir / "model"
            destination.mkdir(parents=True, exist_ok=True)
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=config.model_uri, dst_path=str(destination))
            )
            downloaded = time.monotonic()
            if config.dependencies == "install":
                Installer(
                    model_uri=config.model_uri,
                    cache=config.dependency_cache,
                    policy=Policy(
                        direct_references=config.direct_references, source_builds=config.source_builds
                    ),
                    work=config.scratch_dir / "dependency-work",
                    max_cache_bytes=config.dependency_cache_max_bytes,
                ).ensure(local)
            installed = time.monotonic()
            pyfunc = mlflow.pyfunc.load_model(str(local))
        except DependencyError as error:
            raise ModelLoadError(redact(str(error), secret_values(os.environ))) from error
        except Exception as error:
            raise ModelLoadError(
                redact(
                    f"cannot load {config.model_uri} from "
                    f"{os.environ.get('MLFLOW_TRACKING_URI', '(MLFLOW_TRACKING_URI is not set)')}: "
                    f"{type(error).__name__}: {shorten(str(error))}",
                    secret_values(os.environ),
                )
            ) from error
        log.info(
            "loaded %s (download %.1f s, dependencies %.1f s, load %.1f s)",
            config.model_uri,
            downloaded - started,
            installed - downloaded,
            time.monotonic() - installed,
        )
        return cls(pyfunc, local_path=local)

    def warm_up(self) -> bool:
        """One prediction on the model's input example; False when the model has none."""
        if self.input_example is None:
            return False
        self.pyfunc.predict(self.input_example)
        return True

    # Scoring.

    def answer(self, request: ParsedRequest) -> bytes:
        """The response body for one request; raises RequestError."""
        return self._answer_parsed(self._parse(request), request.params)

    def answer_group(self, group: Sequence[ParsedRequest]) -> BatchOutcome:
        """Scores requests of one batch key in as few predict calls as keep each answer what the
        request alone gets (sharing.py): requests of equal kinds parsed together, the others each
        parsed alone and joined where their parsed inputs agree, the rest in calls of their own.
        A shared call that fails, or whose output is not one prediction per row, is made again
        request by request, so a bad request only fails itself."""
        parsed: list[Any] = [_UNPARSED] * len(group)
        answers: list[bytes | RequestError | None] = [None] * len(group)
        calls: list[int] = []
        alone: set[int] = set()

        def together(members: list[int]) -> Any:
            return self._parse_body(merge([group[i] for i in members]))

        def joined(members: list[int]) -> Any:
            return join([parsed[i] for i in members])

        def share(members: list[int], data: Callable[[list[int]], Any]) -> None:
            shared = self._answer_shared(lambda: data(members), [group[i].rows or 0 for i in members])
            if shared is None:
                for index in members:  # made again below, parsed again as a lone request is
                    parsed[index] = _UNPARSED
                    alone.add(index)
                return
            for index, answer in zip(members, shared, strict=True):
                answers[index] = answer
            calls.append(len(members))

        if len(group) > 1:
            if self._parses_together:
                for members in _by(range(len(group)), lambda i: kinds(group[i])):
                    share(members, together)
            rest = [index for index, answer in enumerate(answers) if answer is None and index not in alone]
            for index in rest:
                parsed[index] = self._parse_or_error(group[index])
            for members in _by(rest, lambda i: self._signature(group[i], parsed[i])):
                share(members, joined)
        done: list[bytes | RequestError] = []
        for index, request in enumerate(group):
            answer = answers[index]
            if answer is None:
                data = self._parse_or_error(request) if parsed[index] is _UNPARSED else parsed[index]
                if isinstance(data, RequestError):
                    answer = data
                else:
                    answer = self._answer_or_error(data, request.params)
                    calls.append(1)
            done.append(answer)
        return BatchOutcome(done, calls=calls)

    @staticmethod
    def _signature(request: ParsedRequest, data: Any) -> Any:
        if isinstance(data, RequestError) or request.rows is None or request.params is not None:
            return None
        return signature(data, request.rows)

    def _answer_shared(self, data: Callable[[], Any], rows: Sequence[int]) -> list[bytes] | None:
        """One predict call for the rows of several requests; None when it has to be made again
        request by request (it failed, or did not answer one prediction per row)."""
        try:
            jsonable = self._jsonable(self._predict(data(), None))
        except Exception:
            return None
        if not isinstance(jsonable, list) or len(jsonable) != sum(rows):
            return None
        answers: list[bytes] = []
        start = 0
        for count in rows:
            answers.append(encode_predictions(jsonable[start : start + count]))
            start += count
        return answers

    def _parse_or_error(self, request: ParsedRequest) -> Any:
        try:
            return self._parse(request)
        except RequestError as error:
            return error

    def _answer_parsed(self, data: Any, params: dict[str, Any] | None) -> bytes:
        try:
            predictions = self._predict(data, params)
        except Exception as error:
            failure = prediction_failure(error)
            if failure.kind == "model":
                self._log_traceback("the model raised on a request (answered 500)", error)
            raise failure from None
        return encode_predictions(self._jsonable(predictions))

    def _answer_or_error(self, parsed: Any, params: dict[str, Any] | None) -> bytes | RequestError:
        try:
            return self._answer_parsed(parsed, params)
        except RequestError as error:
            return error
        except Exception as error:  # a bug of ours, not the client's
            self._log_traceback("unexpected error while scoring (answered 500)", error)
            return RequestError(500, f"internal error: {type(error).__name__}", error_code="INTERNAL_ERROR")

    def _log_traceback(self, what: str, error: Exception) -> None:
        # The traceback is what the model's owner needs; the exception's text can quote anything
        # the model had at hand, so credentials are masked first.
        text = "".join(traceback.format_exception(error)).rstrip()
        log.error("%s:\n%s", what, redact(text, self._secrets))

    def _parse(self, request: ParsedRequest) -> Any:
        if request.content_type == CONTENT_CSV:
            from mlflow.pyfunc.scoring_server import parse_csv_input

            return self._mlflow_call(parse_csv_input, StringIO(request.payload), self.input_schema)
        return self._parse_body({request.format or "": request.payload})

    def _parse_body(self, body: dict[str, Any]) -> Any:
        if self.unparsed_inputs:
            if INPUTS not in body:
                raise RequestError(400, "This model takes its input under the 'inputs' key.")
            return body[INPUTS]
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        return self._mlflow_call(infer_and_parse_data, body, self.input_schema)

    def _predict(self, data: Any, params: dict[str, Any] | None) -> Any:
        if self.accepts_params:
            return self.pyfunc.predict(data, params=params)
        return self.pyfunc.predict(data)

    @staticmethod
    def _jsonable(raw: Any) -> Any:
        from mlflow.utils.proto_json_utils import _get_jsonable_obj

        try:
            return _get_jsonable_obj(raw, pandas_orient="records")
        except Exception as error:
            raise RequestError(
                500,
                f"The model's output cannot be serialized: {type(error).__name__}",
                error_code="INTERNAL_ERROR",
                kind="model",
            ) from None

    @staticmethod
    def _mlflow_call(fn: Any, *args: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args)
        except MlflowException as error:
            status = error.get_http_status_code()
            raise RequestError(status if 400 <= status < 500 else 400, error.message) from None
        except (ValueError, TypeError, KeyError) as error:
            raise RequestError(400, f"Failed to parse the input: {error}") from None
