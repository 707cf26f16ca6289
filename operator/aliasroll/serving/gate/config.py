"""The gate's settings, from the environment the operator gives its Job (docs/gate.md), and the
thresholds, parsed into what `mlflow.models.MetricThreshold` takes.

ALIASROLL_GATE_THRESHOLDS is a JSON object keyed by MLflow metric name (as `mlflow.models.evaluate`
names them: accuracy_score, f1_score, log_loss, root_mean_squared_error, ...), each value holding
MetricThreshold's own fields in camelCase:

    {"accuracy_score": {"threshold": 0.8, "minRelativeChange": 0.0},
     "log_loss": {"greaterIsBetter": false, "threshold": 0.5, "minAbsoluteChange": 0.01}}

`threshold` is an absolute bound (at least it when greater is better, at most it otherwise);
`minAbsoluteChange` (> 0) and `minRelativeChange` (0 to 1; 0 means "not worse than the baseline") are
the improvement over the baseline that MLflow asks of the candidate. `greaterIsBetter` may be left out
for MLflow's built-in metrics, whose direction is known.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aliasroll.serving.gate.message import INVALID_CONFIG, METRIC_NAME, GateError

DEFAULT_EXPERIMENT: Final = "aliasroll-gate"
DEFAULT_DEADLINE_SECONDS: Final = 600.0
MAX_DEADLINE_SECONDS: Final = 86400.0
DEFAULT_MAX_DATA_BYTES: Final = 64 * 1024 * 1024
MAX_DATA_BYTES_LIMIT: Final = 4 * 1024 * 1024 * 1024
# At most this many metrics: their report must fit the termination message.
MAX_METRICS: Final = 16
MAX_TARGET_LENGTH: Final = 256
# Where the image installs the evaluation packages (serving-image/gate-requirements.txt).
DEFAULT_PACKAGES_DIR: Final = "/opt/gate"
MODEL_TYPES: Final = ("classifier", "regressor")

# The direction of MLflow's built-in classifier and regressor metrics.
KNOWN_DIRECTIONS: Final[Mapping[str, bool]] = {
    "accuracy_score": True,
    "precision_score": True,
    "recall_score": True,
    "f1_score": True,
    "roc_auc": True,
    "precision_recall_auc": True,
    "log_loss": False,
    "mean_absolute_error": False,
    "mean_squared_error": False,
    "root_mean_squared_error": False,
    "max_error": False,
    "mean_absolute_percentage_error": False,
    "r2_score": True,
}

_PINNED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_DATA_SCHEMES = ("runs:/", "mlflow-artifacts:")
_DATA_FORMATS = (".csv", ".parquet")
_FIELDS = {"greaterIsBetter", "threshold", "minAbsoluteChange", "minRelativeChange"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def invalid(detail: str) -> GateError:
    return GateError(INVALID_CONFIG, detail)


@dataclass(frozen=True)
class Bound:
    """One metric's thresholds, as MetricThreshold holds them."""

    metric: str
    greater_is_better: bool
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None

    @property
    def relative(self) -> bool:
        """Whether it compares with a baseline."""
        return self.min_absolute_change is not None or self.min_relative_change is not None

    def to_mlflow(self, *, with_baseline: bool) -> Any:
        """The MetricThreshold; without a baseline only the absolute part (None if it has none)."""
        from mlflow.models import MetricThreshold

        if not with_baseline and self.threshold is None:
            return None
        return MetricThreshold(
            threshold=self.threshold,
            min_absolute_change=self.min_absolute_change if with_baseline else None,
            min_relative_change=self.min_relative_change if with_baseline else None,
            greater_is_better=self.greater_is_better,
        )

    def bound(self, baseline: float | None) -> float | None:
        """The strictest value the candidate must reach, as MLflow's checks put it together."""
        candidates = [] if self.threshold is None else [self.threshold]
        sign = 1.0 if self.greater_is_better else -1.0
        if baseline is not None and math.isfinite(baseline):
            if self.min_absolute_change is not None:
                candidates.append(baseline + sign * self.min_absolute_change)
            if self.min_relative_change is not None:
                step = self.min_relative_change * abs(baseline) if baseline != 0 else 1e-10
                candidates.append(baseline + sign * step)
        if not candidates:
            return None
        return max(candidates) if self.greater_is_better else min(candidates)


def _finite(metric: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric}.{key} must be a finite number")
    return float(value)


def _bound(metric: str, fields: Any) -> Bound:
    if not isinstance(metric, str) or not METRIC_NAME.match(metric):
        raise invalid("ALIASROLL_GATE_THRESHOLDS: a metric name must be a word of at most 64 characters")
    if not isinstance(fields, dict) or not fields:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric} must be an object of thresholds")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric} has unknown fields {unknown}")
    greater = fields.get("greaterIsBetter", KNOWN_DIRECTIONS.get(metric))
    if not isinstance(greater, bool):
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric} needs greaterIsBetter (true or false)")
    threshold = _finite(metric, "threshold", fields.get("threshold"))
    absolute = _finite(metric, "minAbsoluteChange", fields.get("minAbsoluteChange"))
    relative = _finite(metric, "minRelativeChange", fields.get("minRelativeChange"))
    if absolute is not None and absolute <= 0:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric}.minAbsoluteChange must be above 0")
    if relative is not None and not 0 <= relative <= 1:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric}.minRelativeChange must be from 0 to 1")
    if threshold is None and absolute is None and relative is None:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS: {metric} names no threshold")
    return Bound(metric, greater, threshold, absolute, relative)


def parse_thresholds(text: str) -> tuple[Bound, ...]:
    """ALIASROLL_GATE_THRESHOLDS into one Bound per metric, in the order given."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise invalid("ALIASROLL_GATE_THRESHOLDS is not JSON") from None
    if not isinstance(raw, dict) or not raw:
        raise invalid("ALIASROLL_GATE_THRESHOLDS must be a JSON object with at least one metric")
    if len(raw) > MAX_METRICS:
        raise invalid(f"ALIASROLL_GATE_THRESHOLDS names more than {MAX_METRICS} metrics")
    return tuple(_bound(metric, fields) for metric, fields in raw.items())


@dataclass(frozen=True)
class ModelRef:
    uri: str
    name: str
    version: str


def _model(env: Mapping[str, str], key: str, *, required: bool) -> ModelRef | None:
    value = env.get(key, "").strip()
    if not value and not required:
        return None
    pinned = _PINNED.match(value)
    if pinned is None:
        raise invalid(f"{key} must be models:/<name>/<version>")
    return ModelRef(value, pinned["name"], pinned["version"])


def _data_uri(env: Mapping[str, str]) -> str:
    value = env.get("ALIASROLL_GATE_DATA_URI", "").strip()
    if not value.startswith(_DATA_SCHEMES) or not value.lower().endswith(_DATA_FORMATS):
        raise invalid("ALIASROLL_GATE_DATA_URI must be a runs:/ or mlflow-artifacts: URI of .csv or .parquet")
    return value


def _number(env: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"{key} must be a number") from None
    if not low <= value <= high:
        raise invalid(f"{key} must be from {low:g} to {high:g}")
    return value


def _flag(env: Mapping[str, str], key: str) -> bool:
    text = env.get(key, "").strip().lower()
    if text not in _TRUE | _FALSE:
        raise invalid(f"{key} must be true or false")
    return text in _TRUE


@dataclass(frozen=True)
class GateConfig:
    candidate: ModelRef
    baseline: ModelRef | None
    data_uri: str
    target: str
    model_type: str
    thresholds: tuple[Bound, ...]
    experiment: str = DEFAULT_EXPERIMENT
    dry_run: bool = False
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    scratch_dir: Path = Path("/scratch")
    packages_dir: Path = Path(DEFAULT_PACKAGES_DIR)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GateConfig:
        env = os.environ if env is None else env
        candidate = _model(env, "ALIASROLL_GATE_CANDIDATE_URI", required=True)
        assert candidate is not None
        target = env.get("ALIASROLL_GATE_TARGET", "")
        if not target.strip() or len(target) > MAX_TARGET_LENGTH:
            raise invalid(f"ALIASROLL_GATE_TARGET must name a column (at most {MAX_TARGET_LENGTH} chars)")
        model_type = env.get("ALIASROLL_GATE_MODEL_TYPE", "").strip()
        if model_type not in MODEL_TYPES:
            raise invalid("ALIASROLL_GATE_MODEL_TYPE must be classifier or regressor")
        return cls(
            candidate=candidate,
            baseline=_model(env, "ALIASROLL_GATE_BASELINE_URI", required=False),
            data_uri=_data_uri(env),
            target=target,
            model_type=model_type,
            thresholds=parse_thresholds(env.get("ALIASROLL_GATE_THRESHOLDS", "")),
            experiment=env.get("ALIASROLL_GATE_EXPERIMENT", "").strip() or DEFAULT_EXPERIMENT,
            dry_run=_flag(env, "ALIASROLL_GATE_DRY_RUN"),
            deadline_seconds=_number(
                env, "ALIASROLL_GATE_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS, 1, MAX_DEADLINE_SECONDS
            ),
            max_data_bytes=int(
                _number(env, "ALIASROLL_GATE_MAX_DATA_BYTES", DEFAULT_MAX_DATA_BYTES, 1, MAX_DATA_BYTES_LIMIT)
            ),
            scratch_dir=Path(env.get("SCRATCH_DIR") or "/scratch"),
            packages_dir=Path(env.get("ALIASROLL_GATE_PACKAGES_DIR") or DEFAULT_PACKAGES_DIR),
        )
