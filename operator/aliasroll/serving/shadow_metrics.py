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

import bisect
import itertools
from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aliasroll.serving.predictions import LabelCap, single_values
from aliasroll.serving.shadow_client import SHADOW_ERROR_REASONS, ShadowErrorReason

# What became of a mirrored request, as production counts it: the shadow's predictions agree with
# its own (within ALIASROLL_SHADOW_TOLERANCE), or not; the shadow failed (an error status, an answer
# over the byte budget or not MLflow's, a broken connection) or passed the deadline; or the copy was
# never sent (the queue was full).
PairOutcome = Literal["agree", "disagree", "shadow_error", "timeout", "dropped"]
PAIR_OUTCOMES: tuple[PairOutcome, ...] = ("agree", "disagree", "shadow_error", "timeout", "dropped")
DIFFERENCE_BUCKETS = (1e-6, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0)


FLAGS = ("false", "true")


class Distribution(Collector):
    """The prediction distribution: counts kept in plain lists and dicts, rendered at each scrape. A
    Histogram's observe() takes a lock and a Counter's labels() a lookup per value: 4.5 ms for an
    answer of 1024 rows, on the event loop, where this takes a tenth of it. Only the loop's thread
    updates and renders it (app.py), so it needs no lock."""

    def __init__(self, labels: dict[str, str], buckets: tuple[float, ...]) -> None:
        self._labels = labels
        self._bounds = list(buckets)
        self._counts = {flag: [0] * (len(buckets) + 1) for flag in FLAGS}  # the last: above every bound
        self._sums = dict.fromkeys(FLAGS, 0.0)
        self._classes: dict[str, dict[str, int]] = {flag: {} for flag in FLAGS}
        self._caps = {flag: LabelCap() for flag in FLAGS}

    def observe(self, predictions: Any, *, mirrored: bool) -> None:
        flag = FLAGS[mirrored]
        counts, bounds, classes, cap = self._counts[flag], self._bounds, self._classes[flag], self._caps[flag]
        total = 0.0
        for value in single_values(predictions):
            if isinstance(value, float):
                if value == value:  # not nan
                    counts[bisect.bisect_left(bounds, value)] += 1
                    total += value
            else:
                name = cap.name(value)
                classes[name] = classes.get(name, 0) + 1
        self._sums[flag] += total

    def collect(self) -> Iterator[Metric]:
        names = list(self._labels)
        values = HistogramMetricFamily(
            "aliasroll_serving_prediction_value",
            "Predictions that are numbers, over fixed buckets (ALIASROLL_PREDICTION_BUCKETS)",
            labels=[*names, "mirrored"],
        )
        classes = CounterMetricFamily(
            "aliasroll_serving_predictions",
            "Predictions that are labels, by label: the first 20 distinct labels by name, the rest as other",
            labels=[*names, "class", "mirrored"],
        )
        for flag in FLAGS:
            cumulative = list(itertools.accumulate(self._counts[flag]))
            buckets = [(_le(bound), float(c)) for bound, c in zip(self._bounds, cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            values.add_metric([*self._labels.values(), flag], buckets, None)
            # Written here: add_metric leaves out _count and _sum when a bucket is below 0 (a sum
            # could then be negative, which OpenMetrics refuses; Prometheus' text format takes it).
            labels = {**self._labels, "mirrored": flag}
            values.add_sample(f"{values.name}_count", labels, float(cumulative[-1]))
            values.add_sample(f"{values.name}_sum", labels, self._sums[flag])
            for name, count in self._classes[flag].items():
                classes.add_metric([*self._labels.values(), name, flag], count)
        yield values
        yield classes


def _le(bound: float) -> str:
    """A bucket's bound as prometheus_client writes its own (`0.0`, `1000.0`, `1e+06`)."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


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
        self.distribution = Distribution(labels, buckets)
        registry.register(self.distribution)
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
        self._mirrored_answered = self.mirrored_requests.labels(**labels, code="200")
        self._mirrored_latency = self.mirrored_latency.labels(**labels)

    def observe(self, predictions: Any, *, mirrored: bool) -> None:
        self.distribution.observe(predictions, mirrored=mirrored)

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
