"""The metrics of shadow traffic and of what versions predict (beside metrics.py's, in its registry).

- Every version: the distribution of its predictions, `aliasroll_serving_predictions_total{class}`
  for labels (the first 20 distinct ones by name, the rest `other`) and the histogram
  `aliasroll_serving_prediction_value` for numbers, over fixed buckets (ALIASROLL_PREDICTION_BUCKETS).
  Both carry `mirrored` ("true" for the predictions of mirrored requests, what a shadow answers).
- The shadow: the mirrored requests it answered, `aliasroll_serving_mirrored_requests_total{code}` and
  `aliasroll_serving_mirrored_request_duration_seconds`, apart from the request metrics a canary
  analysis reads (`aliasroll_serving_requests_total`, `..._request_duration_seconds`), which never
  count them.
- Production, while it mirrors: each mirrored request's pair of answers by outcome,
  `aliasroll_serving_shadow_pairs_total{outcome}`, why the shadow gave no answer to compare,
  `aliasroll_serving_shadow_errors_total{reason}`, the absolute difference of their numbers,
  `aliasroll_serving_shadow_abs_difference`, and the copies waiting, `aliasroll_serving_shadow_queue`.

Every label value is from a closed set, or (a class) bounded by predictions.LabelCap; nothing of the
shadow's answer ever becomes a label.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aliasroll.serving.predictions import LabelCap, Row, single_cells
from aliasroll.serving.shadow_client import SHADOW_ERROR_REASONS, ShadowErrorReason

# What became of a mirrored request, as production counts it: the shadow's predictions agree with
# its own (within ALIASROLL_SHADOW_TOLERANCE), or not; the shadow failed (an error status, an answer
# over the byte budget or not MLflow's, a broken connection) or passed the deadline; or the copy was
# never sent (the queue was full).
PairOutcome = Literal["agree", "disagree", "shadow_error", "timeout", "dropped"]
PAIR_OUTCOMES: tuple[PairOutcome, ...] = ("agree", "disagree", "shadow_error", "timeout", "dropped")
DIFFERENCE_BUCKETS = (1e-6, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0)


class PredictionMetrics:
    """What a version predicts, and the mirrored requests it answered."""

    def __init__(
        self,
        registry: CollectorRegistry,
        labels: dict[str, str],
        *,
        buckets: tuple[float, ...],
        latency_buckets: tuple[float, ...],
    ) -> None:
        names = list(labels)
        self.classes = Counter(
            "aliasroll_serving_predictions",
            "Predictions that are labels, by label: the first 20 distinct labels by name, the rest as other",
            [*names, "class", "mirrored"],
            registry=registry,
        )
        self.values = Histogram(
            "aliasroll_serving_prediction_value",
            "Predictions that are numbers, over fixed buckets (ALIASROLL_PREDICTION_BUCKETS)",
            [*names, "mirrored"],
            buckets=buckets,
            registry=registry,
        )
        self.mirrored_requests = Counter(
            "aliasroll_serving_mirrored_requests",
            "Mirrored scoring requests (X-Aliasroll-Mirror) by HTTP status, "
            "never counted in aliasroll_serving_requests",
            [*names, "code"],
            registry=registry,
        )
        self.mirrored_latency = Histogram(
            "aliasroll_serving_mirrored_request_duration_seconds",
            "Time to answer a mirrored scoring request",
            names,
            buckets=latency_buckets,
            registry=registry,
        )
        self._labels = labels
        self._caps = {"true": LabelCap(), "false": LabelCap()}
        self._values = {flag: self.values.labels(**labels, mirrored=flag) for flag in ("true", "false")}
        self._mirrored_answered = self.mirrored_requests.labels(**labels, code="200")
        self._mirrored_latency = self.mirrored_latency.labels(**labels)

    def observe(self, rows: list[Row], *, mirrored: bool) -> None:
        flag = "true" if mirrored else "false"
        values = self._values[flag]
        for cell in single_cells(rows):
            if isinstance(cell, float):
                values.observe(cell)
            else:
                label = self._caps[flag].name(cell)
                self.classes.labels(**self._labels, mirrored=flag, **{"class": label}).inc()

    def observe_mirrored(self, *, code: int, seconds: float) -> None:
        if code == 200:
            self._mirrored_answered.inc()
        else:
            self.mirrored_requests.labels(**self._labels, code=str(code)).inc()
        self._mirrored_latency.observe(seconds)


class PairMetrics:
    """Production's side of shadow traffic: the pairs of answers, and the queue."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        names = list(labels)
        self.pairs = Counter(
            "aliasroll_serving_shadow_pairs",
            "Mirrored requests by outcome: agree, disagree, shadow_error, timeout, dropped",
            [*names, "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "aliasroll_serving_shadow_errors",
            "Mirrored requests the shadow gave no answer to compare to, by reason",
            [*names, "reason"],
            registry=registry,
        )
        self.difference = Histogram(
            "aliasroll_serving_shadow_abs_difference",
            "Absolute difference between production's and the shadow's numeric predictions",
            names,
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )
        self.queue = Gauge(
            "aliasroll_serving_shadow_queue",
            "Mirrored requests waiting for the shadow or in flight to it",
            names,
            registry=registry,
        )
        self._pairs = {outcome: self.pairs.labels(**labels, outcome=outcome) for outcome in PAIR_OUTCOMES}
        self._errors = {
            reason: self.errors.labels(**labels, reason=reason) for reason in SHADOW_ERROR_REASONS
        }
        self._difference = self.difference.labels(**labels)
        self._queue = self.queue.labels(**labels)

    def observe(self, outcome: PairOutcome, differences: tuple[float, ...] = ()) -> None:
        self._pairs[outcome].inc()
        for difference in differences:
            self._difference.observe(difference)

    def observe_error(self, reason: ShadowErrorReason) -> None:
        self._pairs["shadow_error"].inc()
        self._errors[reason].inc()

    def set_queue(self, depth: int) -> None:
        self._queue.set(depth)
