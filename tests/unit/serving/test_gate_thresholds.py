"""The holdout gate's settings: ALIASROLL_GATE_THRESHOLDS into MLflow's MetricThreshold, the bound
each metric is held to, and the environment the Job is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aliasroll.serving.gate.config import MAX_METRICS, Bound, GateConfig, parse_thresholds
from aliasroll.serving.gate.message import INVALID_CONFIG, GateError

ENV = {
    "ALIASROLL_GATE_CANDIDATE_URI": "models:/churn/7",
    "ALIASROLL_GATE_BASELINE_URI": "models:/churn/5",
    "ALIASROLL_GATE_DATA_URI": "runs:/abc123/holdout.parquet",
    "ALIASROLL_GATE_TARGET": "churned",
    "ALIASROLL_GATE_MODEL_TYPE": "classifier",
    "ALIASROLL_GATE_THRESHOLDS": '{"accuracy_score": {"threshold": 0.8, "minRelativeChange": 0.0}}',
}


def test_mlflow_s_fields_in_camel_case_with_known_directions() -> None:
    text = json.dumps(
        {
            "accuracy_score": {"threshold": 0.8, "minRelativeChange": 0},
            "log_loss": {"minAbsoluteChange": 0.01},
            "my_metric": {"greaterIsBetter": False, "threshold": 3},
        }
    )
    assert parse_thresholds(text) == (
        Bound("accuracy_score", True, threshold=0.8, min_relative_change=0.0),
        Bound("log_loss", False, min_absolute_change=0.01),
        Bound("my_metric", False, threshold=3.0),
    )


@pytest.mark.parametrize(
    "thresholds",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("[]", id="not-an-object"),
        pytest.param("{}", id="no-metric"),
        pytest.param({"custom": {"threshold": 1}}, id="unknown-direction"),
        pytest.param({"accuracy_score": {}}, id="no-threshold"),
        pytest.param({"accuracy_score": {"greaterIsBetter": True}}, id="direction-only"),
        pytest.param({"accuracy_score": {"treshold": 0.8}}, id="misspelt-field"),
        pytest.param({"accuracy_score": {"threshold": "0.8"}}, id="a-string"),
        pytest.param({"accuracy_score": {"threshold": True}}, id="a-boolean"),
        pytest.param({"accuracy_score": {"minAbsoluteChange": 0}}, id="absolute-change-zero"),
        pytest.param({"accuracy_score": {"minRelativeChange": 1.5}}, id="relative-change-above-one"),
        pytest.param({"accuracy_score": {"minRelativeChange": -0.05}}, id="relative-change-negative"),
        pytest.param({"accuracy_score": {"greaterIsBetter": "yes", "threshold": 1}}, id="direction-a-string"),
        pytest.param({'acc"}': {"greaterIsBetter": True, "threshold": 1}}, id="name-not-a-word"),
        pytest.param({"a" * 65: {"greaterIsBetter": True, "threshold": 1}}, id="name-too-long"),
        pytest.param(
            {f"m{i}": {"greaterIsBetter": True, "threshold": 1} for i in range(MAX_METRICS + 1)},
            id="too-many",
        ),
    ],
)
def test_thresholds_mlflow_would_refuse_or_the_message_could_not_carry_are_refused(thresholds: Any) -> None:
    text = thresholds if isinstance(thresholds, str) else json.dumps(thresholds)
    with pytest.raises(GateError) as raised:
        parse_thresholds(text)
    assert raised.value.reason == INVALID_CONFIG
    assert "ALIASROLL_GATE_THRESHOLDS" in str(raised.value)


def test_each_bound_is_a_metric_threshold_mlflow_accepts() -> None:
    bound = Bound("accuracy_score", True, threshold=0.8, min_absolute_change=0.01, min_relative_change=0.0)
    threshold = bound.to_mlflow(with_baseline=True)
    assert (threshold.threshold, threshold.min_absolute_change, threshold.min_relative_change) == (
        0.8,
        0.01,
        0.0,
    )
    assert threshold.greater_is_better is True
    alone = bound.to_mlflow(with_baseline=False)  # no production yet: the absolute part only
    assert (alone.threshold, alone.min_absolute_change, alone.min_relative_change) == (0.8, None, None)
    assert Bound("log_loss", False, min_relative_change=0.1).to_mlflow(with_baseline=False) is None


@pytest.mark.parametrize(
    ("bound", "baseline", "expected"),
    [
        pytest.param(Bound("a", True, threshold=0.8), None, 0.8, id="absolute"),
        pytest.param(
            Bound("a", True, threshold=0.8, min_relative_change=0.0), 0.9, 0.9, id="not-below-baseline"
        ),
        pytest.param(
            Bound("a", True, threshold=0.8, min_relative_change=0.0), 0.7, 0.8, id="threshold-stricter"
        ),
        pytest.param(Bound("a", True, min_relative_change=0.1), 0.5, 0.55, id="relative-up"),
        pytest.param(Bound("a", True, min_relative_change=0.1), -2.0, -1.8, id="relative-negative-baseline"),
        pytest.param(Bound("l", False, min_relative_change=0.1), 0.5, 0.45, id="relative-down"),
        pytest.param(Bound("l", False, threshold=0.4, min_absolute_change=0.2), 0.5, 0.3, id="absolute-down"),
        pytest.param(Bound("a", True, min_absolute_change=0.1), None, None, id="relative-without-baseline"),
    ],
)
def test_the_bound_reported_is_the_strictest_mlflow_checks(
    bound: Bound, baseline: float | None, expected: float | None
) -> None:
    assert bound.bound(baseline) == (pytest.approx(expected) if expected is not None else None)


def test_the_job_s_environment() -> None:
    config = GateConfig.from_env({**ENV, "SCRATCH_DIR": "/tmp/s", "ALIASROLL_GATE_DRY_RUN": "true"})
    assert (config.candidate.name, config.candidate.version) == ("churn", "7")
    assert config.baseline is not None
    assert config.baseline.version == "5"
    assert config.dry_run is True
    assert config.experiment == "aliasroll-gate"
    assert config.deadline_seconds == 600
    assert config.max_data_bytes == 64 * 1024 * 1024
    assert config.scratch_dir == Path("/tmp/s")
    assert config.packages_dir == Path("/opt/gate")
    no_baseline = GateConfig.from_env({**ENV, "ALIASROLL_GATE_BASELINE_URI": ""})
    assert no_baseline.baseline is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ALIASROLL_GATE_CANDIDATE_URI", ""),
        ("ALIASROLL_GATE_CANDIDATE_URI", "models:/churn@canary"),
        ("ALIASROLL_GATE_BASELINE_URI", "runs:/abc/model"),
        ("ALIASROLL_GATE_DATA_URI", "file:///etc/passwd.csv"),
        ("ALIASROLL_GATE_DATA_URI", "https://example.com/holdout.csv"),
        ("ALIASROLL_GATE_DATA_URI", "runs:/abc/holdout.json"),
        ("ALIASROLL_GATE_TARGET", ""),
        ("ALIASROLL_GATE_MODEL_TYPE", "ranker"),
        ("ALIASROLL_GATE_DRY_RUN", "maybe"),
        ("ALIASROLL_GATE_DEADLINE_SECONDS", "0"),
        ("ALIASROLL_GATE_DEADLINE_SECONDS", "soon"),
        ("ALIASROLL_GATE_MAX_DATA_BYTES", "-1"),
    ],
)
def test_a_setting_the_gate_cannot_run_with_names_itself(key: str, value: str) -> None:
    with pytest.raises(GateError) as raised:
        GateConfig.from_env({**ENV, key: value})
    assert raised.value.reason == INVALID_CONFIG
    assert key in str(raised.value)
