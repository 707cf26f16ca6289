"""The gate's report to the operator: one small JSON document of a fixed schema in the container's
termination message (at most 4096 bytes, what the kubelet keeps).

The operator reads it as hostile input, so it holds only words of a fixed vocabulary, numbers, the
metric names the thresholds named (checked when they were parsed) and the evaluation run's id (hex):
never a model's output, an exception's text or anything a remote server answered. Why a gate ended
in an error is said in the Job's log, redacted.

    {"verdict": "passed|failed|error", "reason": "<REASONS>", "model": "candidate|baseline|null",
     "dryRun": false, "runId": "<hex>|null",
     "metrics": [{"name": "...", "candidate": 0.9, "baseline": 0.8, "bound": 0.8, "ok": true}],
     "truncated": false}
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# What the kubelet keeps of a termination message.
MESSAGE_LIMIT: Final = 4096

PASSED: Final = "passed"
FAILED: Final = "failed"
ERROR: Final = "error"

# The reason of a verdict (passed, failed) ...
REASON_PASSED: Final = "ThresholdsMet"
REASON_FAILED: Final = "ThresholdsNotMet"
# ... and of an error (docs/gate.md says what each means and what to do).
INVALID_CONFIG: Final = "InvalidConfig"
BAD_DATA_URI: Final = "BadDataURI"
DATA_TOO_LARGE: Final = "DataTooLarge"
BAD_DATA: Final = "BadData"
MISSING_COLUMN: Final = "MissingColumn"
MODEL_LOAD_FAILED: Final = "ModelLoadFailed"
EVALUATION_FAILED: Final = "EvaluationFailed"
UNKNOWN_METRIC: Final = "UnknownMetric"
TRACKING_FAILED: Final = "TrackingFailed"
TIMEOUT: Final = "Timeout"
INTERNAL_ERROR: Final = "InternalError"

ERROR_REASONS: Final = frozenset(
    {
        INVALID_CONFIG,
        BAD_DATA_URI,
        DATA_TOO_LARGE,
        BAD_DATA,
        MISSING_COLUMN,
        MODEL_LOAD_FAILED,
        EVALUATION_FAILED,
        UNKNOWN_METRIC,
        TRACKING_FAILED,
        TIMEOUT,
        INTERNAL_ERROR,
    }
)
REASONS: Final = frozenset({REASON_PASSED, REASON_FAILED, *ERROR_REASONS})
MODELS: Final = frozenset({"candidate", "baseline"})

# Exit codes: a verdict (passed or failed) is a success of the Job; an error is not.
EXIT_VERDICT: Final = 0
EXIT_ERROR: Final = 1
EXIT_INVALID_CONFIG: Final = 2

# What a metric name may be (config.py refuses others) and what a run id is.
METRIC_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
_RUN_ID: Final = re.compile(r"^[0-9a-f]{1,64}$")


class GateError(Exception):
    """Why the gate cannot give a verdict: a reason of the vocabulary (for the message) and a text for
    the log only."""

    def __init__(self, reason: str, detail: str, *, model: str | None = None) -> None:
        assert reason in ERROR_REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.model = model


@dataclass(frozen=True)
class MetricReport:
    """One metric the thresholds named: both values, the bound the candidate was held to (the
    strictest that applied) and MLflow's verdict on it. None where there is no number."""

    name: str
    candidate: float | None
    baseline: float | None
    bound: float | None
    ok: bool


@dataclass(frozen=True)
class Report:
    verdict: str
    reason: str
    metrics: tuple[MetricReport, ...] = ()
    run_id: str | None = None
    model: str | None = None
    dry_run: bool = False

    @classmethod
    def error(cls, error: GateError, *, run_id: str | None = None, dry_run: bool = False) -> Report:
        return cls(ERROR, error.reason, run_id=run_id, model=error.model, dry_run=dry_run)

    @property
    def exit_code(self) -> int:
        if self.verdict in (PASSED, FAILED):
            return EXIT_VERDICT
        return EXIT_INVALID_CONFIG if self.reason == INVALID_CONFIG else EXIT_ERROR


def _number(value: float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metric(metric: MetricReport) -> dict[str, Any]:
    return {
        "name": metric.name if METRIC_NAME.match(metric.name) else "invalid",
        "candidate": _number(metric.candidate),
        "baseline": _number(metric.baseline),
        "bound": _number(metric.bound),
        "ok": bool(metric.ok),
    }


def document(report: Report) -> dict[str, Any]:
    """The message as a JSON object: only the schema's keys, each value checked against its kind."""
    verdict = report.verdict if report.verdict in (PASSED, FAILED, ERROR) else ERROR
    return {
        "verdict": verdict,
        "reason": report.reason if report.reason in REASONS else INTERNAL_ERROR,
        "model": report.model if report.model in MODELS else None,
        "dryRun": bool(report.dry_run),
        "runId": report.run_id if report.run_id and _RUN_ID.match(report.run_id) else None,
        "metrics": [_metric(metric) for metric in report.metrics],
        "truncated": False,
    }


def encode(report: Report, limit: int = MESSAGE_LIMIT) -> bytes:
    """The message's bytes, at most `limit`: metrics are left off from the end, and `truncated` says
    so, when all of them do not fit (the evaluation run has every one)."""
    body = document(report)
    while True:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        if len(data) <= limit or not body["metrics"]:
            return data[:limit]
        body["metrics"] = body["metrics"][:-1]
        body["truncated"] = True


def write(report: Report, env: dict[str, str] | None = None) -> Path | None:
    """Writes the message where the pod's terminationMessagePath says (TERMINATION_MESSAGE_PATH, as the
    model server; default /dev/termination-log, skipped outside a pod, where it does not exist)."""
    env = dict(os.environ) if env is None else env
    given = env.get("TERMINATION_MESSAGE_PATH")
    path = Path(given or "/dev/termination-log")
    if not given and not path.exists():
        return None
    path.write_bytes(encode(report))
    return path
