"""The holdout gate's termination message: a fixed schema of fixed words and numbers, at most 4096
bytes, whatever the report holds; the exit codes; the deadline."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

import aliasroll.serving.gate.__main__ as entry
from aliasroll.serving.gate.config import GateConfig
from aliasroll.serving.gate.message import (
    BAD_DATA_URI,
    ERROR,
    FAILED,
    INTERNAL_ERROR,
    INVALID_CONFIG,
    MESSAGE_LIMIT,
    MODEL_LOAD_FAILED,
    PASSED,
    REASON_FAILED,
    TIMEOUT,
    GateError,
    MetricReport,
    Report,
    encode,
    write,
)

KEYS = {"verdict", "reason", "model", "dryRun", "runId", "metrics", "truncated"}
METRIC_KEYS = {"name", "candidate", "baseline", "bound", "ok"}


def test_a_failed_verdict_names_the_metric_both_values_and_the_bound() -> None:
    report = Report(
        FAILED,
        REASON_FAILED,
        (MetricReport("accuracy_score", 0.71, 0.83, 0.83, False),),
        run_id="0123456789abcdef0123456789abcdef",
    )
    message = json.loads(encode(report))
    assert set(message) == KEYS
    assert message["verdict"] == "failed"
    assert message["reason"] == "ThresholdsNotMet"
    assert message["metrics"] == [
        {"name": "accuracy_score", "candidate": 0.71, "baseline": 0.83, "bound": 0.83, "ok": False}
    ]
    assert message["runId"] == "0123456789abcdef0123456789abcdef"
    assert report.exit_code == 0


def test_only_the_vocabulary_and_numbers_reach_the_message() -> None:
    hostile = Report(
        "passed; rm -rf /",
        "Because the model said so",
        (MetricReport('x", "ok": true}', math.nan, math.inf, None, True),),
        run_id="../../etc/passwd",
        model="the model's own words",
    )
    message = json.loads(encode(hostile))
    assert message["verdict"] == ERROR
    assert message["reason"] == INTERNAL_ERROR
    assert message["runId"] is None
    assert message["model"] is None
    (metric,) = message["metrics"]
    assert set(metric) == METRIC_KEYS
    assert metric["name"] == "invalid"
    assert (metric["candidate"], metric["baseline"], metric["bound"]) == (None, None, None)


def test_the_message_fits_what_the_kubelet_keeps() -> None:
    metrics = tuple(
        MetricReport(f"metric_{i:02d}_" + "x" * 50, 1 / 3, 2 / 3, 1 / 7, False) for i in range(60)
    )
    data = encode(Report(FAILED, REASON_FAILED, metrics, run_id="a" * 32))
    assert len(data) <= MESSAGE_LIMIT
    message = json.loads(data)
    assert message["truncated"] is True
    assert 0 < len(message["metrics"]) < 60
    assert message["metrics"][0]["name"].startswith("metric_00_")  # the first ones are kept
    # Sixteen metrics of the longest names (what the thresholds allow) always fit.
    allowed = tuple(MetricReport(f"m{i:02d}" + "x" * 61, 1 / 3, 2 / 3, 1 / 7, False) for i in range(16))
    assert json.loads(encode(Report(FAILED, REASON_FAILED, allowed, run_id="a" * 32)))["truncated"] is False


def test_errors_exit_non_zero_and_say_which_model() -> None:
    report = Report.error(GateError(MODEL_LOAD_FAILED, "cannot load: secret text", model="baseline"))
    message = json.loads(encode(report))
    assert (message["verdict"], message["reason"], message["model"]) == (
        "error",
        "ModelLoadFailed",
        "baseline",
    )
    assert "secret" not in encode(report).decode()
    assert report.exit_code == 1
    assert Report.error(GateError(INVALID_CONFIG, "x")).exit_code == 2
    assert Report(PASSED, "ThresholdsMet").exit_code == 0


def test_the_message_goes_where_the_pod_says(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert write(Report.error(GateError(BAD_DATA_URI, "x")), {"TERMINATION_MESSAGE_PATH": str(path)}) == path
    assert json.loads(path.read_text())["reason"] == "BadDataURI"


def _config(deadline: float) -> GateConfig:
    return GateConfig.from_env(
        {
            "ALIASROLL_GATE_CANDIDATE_URI": "models:/m/2",
            "ALIASROLL_GATE_DATA_URI": "runs:/abc/holdout.csv",
            "ALIASROLL_GATE_TARGET": "y",
            "ALIASROLL_GATE_MODEL_TYPE": "regressor",
            "ALIASROLL_GATE_THRESHOLDS": '{"r2_score": {"threshold": 0.5}}',
            "ALIASROLL_GATE_DEADLINE_SECONDS": str(deadline),
        }
    )


def test_past_the_deadline_the_report_is_timeout_with_the_run_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def stuck(config: GateConfig, on_run: Any) -> Report:
        on_run("abcdef0123")
        release.wait(30)
        return Report(PASSED, "ThresholdsMet")

    killed: list[str] = []
    monkeypatch.setattr(entry, "_mark_killed", killed.append)
    try:
        report, timed_out = entry.run_with_deadline(_config(1), stuck)
    finally:
        release.set()
    assert timed_out is True
    assert (report.verdict, report.reason, report.run_id) == (ERROR, TIMEOUT, "abcdef0123")
    assert killed == ["abcdef0123"]


def test_an_unexpected_failure_is_an_internal_error_not_a_pass() -> None:
    def broken(config: GateConfig, on_run: Any) -> Report:
        raise KeyError("the model's words")

    report, timed_out = entry.run_with_deadline(_config(10), broken)
    assert timed_out is False
    assert (report.verdict, report.reason) == (ERROR, INTERNAL_ERROR)
