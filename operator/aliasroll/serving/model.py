"""The pinned model: downloaded once into scratch, loaded, warmed up, then scored request by request
or batch by batch. Everything here runs in worker threads, never on the event loop."""

from __future__ import annotations

import inspect
import logging
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from aliasroll.serving.config import ServingConfig
from aliasroll.serving.dependencies import DependencyError, Installer
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
    """Per-request answers of one group, and whether the group was scored as one batch."""

    answers: list[bytes | RequestError]
    batched: bool


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
                Installer(model_uri=config.model_uri, cache=config.dependency_cache).ensure(local)
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
        data = self._parse(request)
        try:
            predictions = self._predict(data, request.params)
        except Exception as error:
            failure = prediction_failure(error)
            if failure.kind == "model":
                self._log_traceback("the model raised on a request (answered 500)", error)
            raise failure from None
        return encode_predictions(self._jsonable(predictions))

    def answer_group(self, group: Sequence[ParsedRequest]) -> BatchOutcome:
        """Scores compatible requests as one batch; falls back to one by one when the batch fails
        or its output is not one prediction per row, so a bad request only fails itself."""
        if len(group) > 1:
            try:
                data = self._parse_body(merge(group))
                jsonable = self._jsonable(self._predict(data, None))
                rows = [request.rows or 0 for request in group]
                if isinstance(jsonable, list) and len(jsonable) == sum(rows):
                    answers: list[bytes | RequestError] = []
                    start = 0
                    for count in rows:
                        answers.append(encode_predictions(jsonable[start : start + count]))
                        start += count
                    return BatchOutcome(answers, batched=True)
            except Exception:
                pass
        return BatchOutcome([self._answer_or_error(request) for request in group], batched=False)

    def _answer_or_error(self, request: ParsedRequest) -> bytes | RequestError:
        try:
            return self.answer(request)
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
