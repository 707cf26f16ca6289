"""spec.canary.gate: the holdout evaluation a new @canary version must pass before any request.

The gate names a labelled holdout set (an MLflow artifact URI), its target column, the model type
and the thresholds MLflow judges with (mlflow.models.MetricThreshold's own terms, plus a tolerance
against @production's value). The operator runs it as a Job (planning/gate.py); the parser refuses
what the CRD refuses, for resources that predate the installed CRD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aliasroll.errors import InvalidSpec
from aliasroll.spec.fields import json_list, json_object, number, parse_duration, string
from aliasroll.spec.types import GateSpec, ModelType, Threshold

DEFAULT_GATE_TIMEOUT = "10m"
MIN_GATE_TIMEOUT_SECONDS = 1.0
MAX_GATE_TIMEOUT_SECONDS = 3600.0
MAX_THRESHOLDS = 16  # the evaluator's own bound (a message of 4096 bytes holds them all)
# Where a holdout may come from: the tenant's own registry's artifacts, never an arbitrary URL.
DATA_SCHEMES = ("runs:/", "mlflow-artifacts:/")
DATA_SUFFIXES = (".csv", ".parquet")
# An MLflow metric name as mlflow.models.evaluate logs them (accuracy_score, log_loss, f1_score, ...).
_METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_COLUMN_MAX = 256


def parse_gate(raw: Mapping[str, Any]) -> GateSpec:
    path = "spec.canary.gate"
    data = string(raw, "data", path=f"{path}.data", required=True)
    if not data.startswith(DATA_SCHEMES):
        raise InvalidSpec(f"{path}.data", f"must be an MLflow artifact URI ({' or '.join(DATA_SCHEMES)}...)")
    if not data.lower().endswith(DATA_SUFFIXES):
        raise InvalidSpec(f"{path}.data", "must name a .csv or .parquet file")
    target = string(raw, "target", path=f"{path}.target", required=True)
    if not target.strip() or len(target) > _COLUMN_MAX:
        raise InvalidSpec(f"{path}.target", f"must be a column name of 1 to {_COLUMN_MAX} characters")
    try:
        model_type = ModelType(str(raw.get("modelType")))
    except ValueError:
        raise InvalidSpec(
            f"{path}.modelType", f"{raw.get('modelType')!r} is not classifier or regressor"
        ) from None
    items = json_list(raw.get("thresholds"), path=f"{path}.thresholds")
    if not 1 <= len(items) <= MAX_THRESHOLDS:
        raise InvalidSpec(f"{path}.thresholds", f"needs 1 to {MAX_THRESHOLDS} metrics")
    thresholds = tuple(
        _threshold(json_object(item, path=f"{path}.thresholds[{i}]"), i) for i, item in enumerate(items)
    )
    names = [threshold.metric for threshold in thresholds]
    if len(set(names)) != len(names):
        raise InvalidSpec(f"{path}.thresholds", "names a metric twice")
    timeout = parse_duration(str(raw.get("timeout", DEFAULT_GATE_TIMEOUT)), field_path=f"{path}.timeout")
    if not MIN_GATE_TIMEOUT_SECONDS <= timeout <= MAX_GATE_TIMEOUT_SECONDS:
        raise InvalidSpec(f"{path}.timeout", "must be from 1s to 1h")
    dry_run = raw.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise InvalidSpec(f"{path}.dryRun", "must be true or false")
    return GateSpec(
        data=data,
        target=target,
        model_type=model_type,
        thresholds=thresholds,
        timeout_seconds=timeout,
        dry_run=dry_run,
    )


def _threshold(raw: Mapping[str, Any], index: int) -> Threshold:
    path = f"spec.canary.gate.thresholds[{index}]"
    metric = string(raw, "metric", path=f"{path}.metric", required=True)
    if not _METRIC.match(metric):
        raise InvalidSpec(f"{path}.metric", f"{metric!r} is not a metric name (letters, digits, _ . -)")
    higher = raw.get("higherIsBetter")
    if not isinstance(higher, bool):
        raise InvalidSpec(f"{path}.higherIsBetter", "is required: true or false")
    threshold = Threshold(
        metric=metric,
        higher_is_better=higher,
        threshold=number(raw.get("threshold"), path=f"{path}.threshold", low=float("-inf")),
        min_absolute_change=_positive(raw.get("minAbsoluteChange"), f"{path}.minAbsoluteChange"),
        min_relative_change=number(
            raw.get("minRelativeChange"), path=f"{path}.minRelativeChange", low=0, high=1
        ),
    )
    if threshold.threshold is None and not threshold.relative:
        raise InvalidSpec(path, "needs a bound: threshold, minAbsoluteChange or minRelativeChange")
    return threshold


def _positive(value: object, path: str) -> float | None:
    parsed = number(value, path=path, low=0)
    if parsed is not None and parsed <= 0:
        raise InvalidSpec(path, "must be more than 0 (MLflow's min_absolute_change)")
    return parsed
