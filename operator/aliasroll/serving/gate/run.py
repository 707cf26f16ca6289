"""One gate: the holdout fetched and read, both versions loaded, each evaluated by MLflow's default
evaluator in one evaluation run (the baseline's in a run nested under it), MLflow's verdict, and the
records: the run's tags name both versions and the verdict, and the candidate version's tags name the
run (`aliasroll.io/gate.*`)."""

from __future__ import annotations

import logging
from typing import Any

from aliasroll.serving.gate import data
from aliasroll.serving.gate.config import GateConfig, ModelRef
from aliasroll.serving.gate.judge import judge
from aliasroll.serving.gate.message import (
    EVALUATION_FAILED,
    FAILED,
    MODEL_LOAD_FAILED,
    PASSED,
    REASON_FAILED,
    REASON_PASSED,
    TRACKING_FAILED,
    GateError,
    Report,
)

log = logging.getLogger("aliasroll.serving.gate")

TAG_PREFIX = "aliasroll.io/gate"
# The default evaluator's work the gate does not need: explanations (SHAP) and their plots.
EVALUATOR_CONFIG = {"default": {"log_model_explainability": False}}


def load(model: ModelRef, role: str) -> Any:
    import mlflow.pyfunc

    try:
        return mlflow.pyfunc.load_model(model.uri)
    except Exception as error:
        detail = f"cannot load the {role} {model.uri}: {type(error).__name__}: {error}"
        raise GateError(MODEL_LOAD_FAILED, detail, model=role) from None


def evaluate(model: Any, frame: Any, config: GateConfig, role: str) -> Any:
    """MLflow's default evaluator over the holdout, logged to the active run."""
    import mlflow.models

    try:
        return mlflow.models.evaluate(
            model=model,
            data=frame,
            targets=config.target,
            model_type=config.model_type,
            evaluators=["default"],
            evaluator_config=EVALUATOR_CONFIG,
        )
    except Exception as error:
        raise GateError(
            EVALUATION_FAILED, f"evaluating the {role} failed: {type(error).__name__}: {error}", model=role
        ) from None


def run_tags(config: GateConfig) -> dict[str, str]:
    tags = {
        f"{TAG_PREFIX}.model": config.candidate.name,
        f"{TAG_PREFIX}.candidate": config.candidate.version,
        f"{TAG_PREFIX}.candidateUri": config.candidate.uri,
        f"{TAG_PREFIX}.baseline": config.baseline.version if config.baseline else "none",
        f"{TAG_PREFIX}.data": config.data_uri,
        f"{TAG_PREFIX}.dryRun": str(config.dry_run).lower(),
    }
    if config.baseline is not None:
        tags[f"{TAG_PREFIX}.baselineUri"] = config.baseline.uri
    return tags


def tag_candidate(config: GateConfig, run_id: str, verdict: str) -> None:
    """The candidate version's tags: which run judged it, against which version, and the verdict."""
    from mlflow import MlflowClient

    tags = {
        f"{TAG_PREFIX}.run": run_id,
        f"{TAG_PREFIX}.verdict": verdict,
        f"{TAG_PREFIX}.baseline": config.baseline.version if config.baseline else "none",
        f"{TAG_PREFIX}.dryRun": str(config.dry_run).lower(),
    }
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(config.candidate.name, config.candidate.version, key, value)
    except Exception as error:
        raise GateError(TRACKING_FAILED, f"cannot tag the candidate version: {error}") from None


def start_run(config: GateConfig) -> Any:
    import mlflow

    try:
        mlflow.set_experiment(config.experiment)
        baseline = f"v{config.baseline.version}" if config.baseline else "no baseline"
        name = f"gate {config.candidate.name} v{config.candidate.version} vs {baseline}"
        return mlflow.start_run(run_name=name, tags=run_tags(config))
    except Exception as error:
        raise GateError(TRACKING_FAILED, f"cannot start the evaluation run: {error}") from None


def gate(config: GateConfig, on_run: Any = None) -> Report:
    """The whole gate; a GateError says why there is no verdict. `on_run(run_id)` is called as soon
    as the evaluation run exists (so a timeout can still name it)."""
    import mlflow

    local = data.fetch(config.data_uri, config.scratch_dir / "holdout", max_bytes=config.max_data_bytes)
    frame = data.read(local, config.target)
    candidate_model = load(config.candidate, "candidate")
    baseline_model = load(config.baseline, "baseline") if config.baseline else None
    with start_run(config) as run:
        run_id = run.info.run_id
        if on_run is not None:
            on_run(run_id)
        candidate = evaluate(candidate_model, frame, config, "candidate")
        baseline = None
        if baseline_model is not None:
            with mlflow.start_run(run_name="baseline", nested=True, tags=run_tags(config)):
                baseline = evaluate(baseline_model, frame, config, "baseline")
        passed, metrics = judge(config.thresholds, candidate, baseline)
        verdict = PASSED if passed else FAILED
        try:
            mlflow.set_tag(f"{TAG_PREFIX}.verdict", verdict)
        except Exception as error:
            raise GateError(TRACKING_FAILED, f"cannot tag the evaluation run: {error}") from None
    tag_candidate(config, run_id, verdict)
    reason = REASON_PASSED if passed else REASON_FAILED
    return Report(verdict, reason, tuple(metrics), run_id=run_id, dry_run=config.dry_run)
