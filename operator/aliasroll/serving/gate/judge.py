"""The verdict, MLflow's: each metric's MetricThreshold given to `mlflow.validate_evaluation_results`
with the two evaluation results, once for all (the verdict) and once per metric (which ones failed),
so the report can name the metric, both values and the bound."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aliasroll.serving.gate.config import Bound
from aliasroll.serving.gate.message import UNKNOWN_METRIC, GateError, MetricReport


def _value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    if metrics is None or name not in metrics:
        return None
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _passes(thresholds: dict[str, Any], candidate: Any, baseline: Any) -> bool:
    import mlflow
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    if not thresholds:
        return True
    try:
        mlflow.validate_evaluation_results(
            validation_thresholds=thresholds, candidate_result=candidate, baseline_result=baseline
        )
    except ModelValidationFailedException:
        return False
    return True


def judge(bounds: Sequence[Bound], candidate: Any, baseline: Any | None) -> tuple[bool, list[MetricReport]]:
    """(passed, one report per bound). `candidate` and `baseline` are EvaluationResults; without a
    baseline only the absolute thresholds are checked, and a metric with none is not judged (ok)."""
    missing = [bound.metric for bound in bounds if bound.metric not in candidate.metrics]
    if missing:
        raise GateError(UNKNOWN_METRIC, f"the evaluation gave no metric named {', '.join(missing)}")
    with_baseline = baseline is not None
    if baseline is not None:
        absent = [b.metric for b in bounds if b.relative and b.metric not in baseline.metrics]
        if absent:
            raise GateError(UNKNOWN_METRIC, f"the baseline's evaluation gave no {', '.join(absent)}")
    thresholds = {
        bound.metric: threshold
        for bound in bounds
        if (threshold := bound.to_mlflow(with_baseline=with_baseline)) is not None
    }
    passed = _passes(thresholds, candidate, baseline)
    reports = []
    for bound in bounds:
        base = _value(baseline.metrics, bound.metric) if baseline is not None else None
        own = {bound.metric: thresholds[bound.metric]} if bound.metric in thresholds else {}
        reports.append(
            MetricReport(
                name=bound.metric,
                candidate=_value(candidate.metrics, bound.metric),
                baseline=base,
                bound=bound.bound(base),
                ok=_passes(own, candidate, baseline),
            )
        )
    return passed, reports
