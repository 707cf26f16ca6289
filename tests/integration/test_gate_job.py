"""The holdout gate's Job program (`python -m aliasroll.serving.gate`) against a real MLflow server,
run as the Job runs it: a process configured by its environment, judged by its exit code and its
termination message.

Two threshold classifiers (0.5 and 0.7) on a seeded holdout whose labels are x > 0.5 with noise: 0.5
is known better. Covers: a passed gate (MLflow's verdict, the evaluation run with both versions'
tags, its nested baseline run, the candidate version's tags), a failed one (relative to the
baseline: the message names the metric, both values and the bound), no baseline (absolute
thresholds only, a Parquet holdout), and each error: a bad data URI, a missing column, a version
that cannot load, a holdout over the byte budget, the deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mlflowserver import MlflowServer

THRESHOLD_MODEL = Path(__file__).parent / "models" / "threshold_model.py"
MODEL = "gate-threshold"
ACCURACY = {"accuracy_score": {"threshold": 0.6, "minRelativeChange": 0.0}}


def _holdout(rows: int = 400) -> Any:
    import numpy as np
    import pandas as pd

    random = np.random.default_rng(24)
    x = random.uniform(0, 1, rows)
    label = ((x + random.normal(0, 0.05, rows)) > 0.5).astype(int)
    y = 2 * x + random.normal(0, 0.1, rows)  # the regressors' target
    return pd.DataFrame({"x": x, "other": random.normal(0, 1, rows), "label": label, "y": y})


def _log_version(config: Mapping[str, Any]) -> str:
    import mlflow

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(THRESHOLD_MODEL),
            model_config=dict(config),
            pip_requirements=["mlflow-skinny", "pandas"],
            registered_model_name=MODEL,
        )
    return f"models:/{MODEL}/{info.registered_model_version}"


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The versions and the holdout's URIs, registered once."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    directory = tmp_path_factory.mktemp("holdout")
    frame = _holdout()
    frame.to_csv(directory / "holdout.csv", index=False)
    frame.to_parquet(directory / "holdout.parquet", index=False)
    (directory / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
    mlflow.set_experiment("gate-data")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(directory / "garbage.parquet"), artifact_path="data")
        mlflow.log_artifact(str(directory / "holdout.csv"), artifact_path="data")
        mlflow.log_artifact(str(directory / "holdout.parquet"), artifact_path="data")
        artifacts = run.info.artifact_uri
    return {
        "good": _log_version({"threshold": 0.5}),
        "worse": _log_version({"threshold": 0.7}),
        "broken": _log_version({"fail_to_load": True}),
        "slow": _log_version({"threshold": 0.5, "sleep": 60}),
        "raising": _log_version({"fail_to_predict": True}),
        "regressor": _log_version({"scale": 2.0}),
        "worse_regressor": _log_version({"scale": 1.5}),
        "csv": f"runs:/{run.info.run_id}/data/holdout.csv",
        "parquet": f"{artifacts}/data/holdout.parquet",
        "run": run.info.run_id,
    }


def _gate(server: MlflowServer, tmp_path: Path, **settings: str) -> tuple[int, dict[str, Any], str]:
    """Runs the gate as its Job does: (exit code, termination message, log)."""
    message = tmp_path / "termination-log"
    scratch = tmp_path / "scratch"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "TERMINATION_MESSAGE_PATH": str(message),
        "SCRATCH_DIR": str(scratch),
        "ALIASROLL_GATE_TARGET": "label",
        "ALIASROLL_GATE_MODEL_TYPE": "classifier",
        "ALIASROLL_GATE_THRESHOLDS": json.dumps(ACCURACY),
        "ALIASROLL_GATE_EXPERIMENT": "gate-runs",
        **settings,
    }
    done = subprocess.run(
        [sys.executable, "-m", "aliasroll.serving.gate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    raw = message.read_bytes()
    assert len(raw) <= 4096
    return done.returncode, json.loads(raw), done.stdout + done.stderr


def _versions(uri: str) -> tuple[str, str]:
    name, version = uri.removeprefix("models:/").split("/")
    return name, version


def test_a_better_candidate_passes_with_mlflow_s_verdict_and_the_records(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path
) -> None:
    code, message, log = _gate(
        mlflow_server,
        tmp_path,
        ALIASROLL_GATE_CANDIDATE_URI=world["good"],
        ALIASROLL_GATE_BASELINE_URI=world["worse"],
        ALIASROLL_GATE_DATA_URI=world["csv"],
    )
    assert code == 0, log
    assert message["verdict"] == "passed"
    assert message["reason"] == "ThresholdsMet"
    (accuracy,) = message["metrics"]
    assert accuracy["name"] == "accuracy_score"
    assert accuracy["ok"] is True
    assert accuracy["candidate"] > accuracy["baseline"] > 0
    assert accuracy["bound"] == pytest.approx(accuracy["baseline"])  # the stricter of 0.6 and the baseline
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(message["runId"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy_score"] == pytest.approx(accuracy["candidate"])
    _, candidate = _versions(world["good"])
    _, baseline = _versions(world["worse"])
    assert run.data.tags["aliasroll.io/gate.candidate"] == candidate
    assert run.data.tags["aliasroll.io/gate.baseline"] == baseline
    assert run.data.tags["aliasroll.io/gate.verdict"] == "passed"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "gate-runs"
    (child,) = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert child.data.metrics["accuracy_score"] == pytest.approx(accuracy["baseline"])
    tags = client.get_model_version(MODEL, candidate).tags
    assert tags["aliasroll.io/gate.run"] == run.info.run_id
    assert tags["aliasroll.io/gate.verdict"] == "passed"
    assert tags["aliasroll.io/gate.baseline"] == baseline


def test_a_worse_candidate_fails_naming_the_metric_the_values_and_the_bound(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path
) -> None:
    thresholds = {
        "accuracy_score": {"minRelativeChange": 0.0},
        "f1_score": {"threshold": 0.1},  # met: the failure names only accuracy
    }
    code, message, log = _gate(
        mlflow_server,
        tmp_path,
        ALIASROLL_GATE_CANDIDATE_URI=world["worse"],
        ALIASROLL_GATE_BASELINE_URI=world["good"],
        ALIASROLL_GATE_DATA_URI=world["csv"],
        ALIASROLL_GATE_THRESHOLDS=json.dumps(thresholds),
    )
    assert code == 0, log  # a verdict: the Job succeeded
    assert message["verdict"] == "failed"
    assert message["reason"] == "ThresholdsNotMet"
    accuracy, f1 = message["metrics"]
    assert accuracy["name"] == "accuracy_score"
    assert accuracy["ok"] is False
    assert accuracy["candidate"] < accuracy["baseline"]
    assert accuracy["bound"] == pytest.approx(accuracy["baseline"])
    assert f1["name"] == "f1_score"
    assert f1["ok"] is True
    assert f1["bound"] == pytest.approx(0.1)
    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(message["runId"])
    assert run.data.tags["aliasroll.io/gate.verdict"] == "failed"
    _, candidate = _versions(world["worse"])
    tags = MlflowClient(tracking_uri=mlflow_server.url).get_model_version(MODEL, candidate).tags
    assert tags["aliasroll.io/gate.verdict"] == "failed"
    assert tags["aliasroll.io/gate.run"] == message["runId"]


def test_without_a_baseline_only_absolute_thresholds_judge(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path
) -> None:
    # f1_score is only relative: with no baseline it is reported, not judged.
    thresholds = {
        "accuracy_score": {"threshold": 0.8, "minRelativeChange": 0.05},
        "f1_score": {"minAbsoluteChange": 0.1},
    }
    code, message, log = _gate(
        mlflow_server,
        tmp_path,
        ALIASROLL_GATE_CANDIDATE_URI=world["good"],
        ALIASROLL_GATE_DATA_URI=world["parquet"],
        ALIASROLL_GATE_THRESHOLDS=json.dumps(thresholds),
        ALIASROLL_GATE_DRY_RUN="true",
    )
    assert code == 0, log
    assert message["verdict"] == "passed"
    assert message["dryRun"] is True
    accuracy, f1 = message["metrics"]
    assert accuracy["baseline"] is None
    assert accuracy["bound"] == pytest.approx(0.8)
    assert accuracy["candidate"] > 0.8
    assert f1["candidate"] > 0
    assert (f1["baseline"], f1["bound"], f1["ok"]) == (None, None, True)
    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(message["runId"])
    assert run.data.tags["aliasroll.io/gate.baseline"] == "none"
    assert run.data.tags["aliasroll.io/gate.dryRun"] == "true"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        pytest.param(
            {"ALIASROLL_GATE_DATA_URI": "runs:/{run}/data/absent.csv"}, "BadDataURI", id="no-such-file"
        ),
        pytest.param(
            {"ALIASROLL_GATE_DATA_URI": "runs:/0123abcd/data/holdout.csv"}, "BadDataURI", id="no-such-run"
        ),
        pytest.param({"ALIASROLL_GATE_TARGET": "absent"}, "MissingColumn", id="missing-column"),
        pytest.param(
            {"ALIASROLL_GATE_DATA_URI": "runs:/{run}/data/garbage.parquet"}, "BadData", id="not-parquet"
        ),
        pytest.param({"ALIASROLL_GATE_CANDIDATE_URI": "{raising}"}, "EvaluationFailed", id="cannot-predict"),
        pytest.param({"ALIASROLL_GATE_MAX_DATA_BYTES": "1000"}, "DataTooLarge", id="too-large"),
        pytest.param({"ALIASROLL_GATE_CANDIDATE_URI": "{broken}"}, "ModelLoadFailed", id="cannot-load"),
        pytest.param(
            {"ALIASROLL_GATE_THRESHOLDS": '{"no_such_metric": {"greaterIsBetter": true, "threshold": 1}}'},
            "UnknownMetric",
            id="unknown-metric",
        ),
    ],
)
def test_a_gate_without_a_verdict_says_why_in_its_words(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path, case: dict[str, str], reason: str
) -> None:
    settings = {
        "ALIASROLL_GATE_CANDIDATE_URI": world["good"],
        "ALIASROLL_GATE_BASELINE_URI": world["worse"],
        "ALIASROLL_GATE_DATA_URI": world["csv"],
        **{
            key: value.replace("{run}", world["run"])
            .replace("{broken}", world["broken"])
            .replace("{raising}", world["raising"])
            for key, value in case.items()
        },
    }
    code, message, log = _gate(mlflow_server, tmp_path, **settings)
    assert code == 1, log
    assert message["verdict"] == "error"
    assert message["reason"] == reason
    assert message["metrics"] == []
    if reason in ("ModelLoadFailed", "EvaluationFailed"):
        assert message["model"] == "candidate"
    assert "fail_to" not in json.dumps(message)  # the model's own words stay in the log
    assert reason in log


def test_the_deadline_ends_the_gate_with_timeout_and_the_run_killed(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path
) -> None:
    started = time.monotonic()
    code, message, log = _gate(
        mlflow_server,
        tmp_path,
        ALIASROLL_GATE_CANDIDATE_URI=world["slow"],
        ALIASROLL_GATE_DATA_URI=world["csv"],
        ALIASROLL_GATE_DEADLINE_SECONDS="20",
    )
    assert code == 1, log
    assert time.monotonic() - started < 50  # the model sleeps 60 s per call
    assert message["verdict"] == "error"
    assert message["reason"] == "Timeout"
    assert message["runId"], log
    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(message["runId"])
    assert run.info.status == "KILLED"


def test_a_regressor_is_judged_on_mlflow_s_regression_metrics(
    mlflow_server: MlflowServer, world: dict[str, str], tmp_path: Path
) -> None:
    # Lower is better for the error (MLflow's built-in direction), higher for r2.
    thresholds = {"root_mean_squared_error": {"minRelativeChange": 0.0}, "r2_score": {"threshold": 0.9}}
    code, message, log = _gate(
        mlflow_server,
        tmp_path,
        ALIASROLL_GATE_CANDIDATE_URI=world["regressor"],
        ALIASROLL_GATE_BASELINE_URI=world["worse_regressor"],
        ALIASROLL_GATE_DATA_URI=world["csv"],
        ALIASROLL_GATE_TARGET="y",
        ALIASROLL_GATE_MODEL_TYPE="regressor",
        ALIASROLL_GATE_THRESHOLDS=json.dumps(thresholds),
    )
    assert code == 0, log
    assert message["verdict"] == "passed"
    rmse, r2 = message["metrics"]
    assert rmse["candidate"] < rmse["baseline"] == pytest.approx(rmse["bound"])
    assert r2["candidate"] > 0.9
    assert all(metric["ok"] for metric in message["metrics"])
