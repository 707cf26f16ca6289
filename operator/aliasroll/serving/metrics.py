"""Prometheus metrics of the server, labelled with the model version that answered.

A canary analysis reads, per version: the 5xx share from `aliasroll_serving_requests_total{code}`,
latency percentiles from `aliasroll_serving_request_duration_seconds`, and whose fault the failures
were from `aliasroll_serving_prediction_failures_total{kind}`. Every label has a closed set of
values (the model, version and track of this process, an HTTP status, an error code, a kind).
Mirrored requests (shadow traffic) count in none of these: shadow_metrics.py has theirs, the
prediction distribution and the comparison of production's answers with the shadow's.
"""

from __future__ import annotations

from typing import Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from aliasroll.serving.config import ServingConfig
from aliasroll.serving.protocol import FailureKind
from aliasroll.serving.shadow_metrics import PairMetrics, PredictionMetrics

# The *_created series double what is scraped and tell nothing a restart counter does not.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Every 5xx this server answers (app.py): present at 0 from the start, so a Prometheus sees a
# version's first failures as an increase, not as a series that appeared already at its value.
SERVER_ERROR_CODES = ("500", "503", "504")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, config: ServingConfig) -> None:
        self.registry = CollectorRegistry()
        labels = {"model": config.model_name, "version": config.model_version, "track": config.track}
        names = list(labels)
        self.requests = Counter(
            "aliasroll_serving_requests",
            "Scoring requests by HTTP status",
            [*names, "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "aliasroll_serving_errors",
            "Scoring requests that failed, by cause",
            [*names, "cause"],
            registry=self.registry,
        )
        self.failures = Counter(
            "aliasroll_serving_prediction_failures",
            "Scoring requests answered without predictions, by whose fault: input (4xx), "
            "model (the model raised, 500), server (loading, deadline, internal error)",
            [*names, "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aliasroll_serving_request_duration_seconds",
            "Time to answer a scoring request",
            names,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "aliasroll_serving_batch_requests",
            "Requests scored by one predict call",
            names,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.aged_out = Counter(
            "aliasroll_serving_connections_aged_out",
            "Keep-alive connections closed (Connection: close) for being older than "
            "ALIASROLL_MAX_CONNECTION_AGE_SECONDS: their clients reconnect where the Service routes now",
            names,
            registry=self.registry,
        )
        self.info = Gauge(
            "aliasroll_serving_model_info",
            "The model version this server serves",
            [*names, "uri"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "aliasroll_serving_ready",
            "1 once the model is loaded and warmed up",
            names,
            registry=self.registry,
        )
        self._labels = labels
        self.predictions, self.pairs = self._shadow_side(config, labels)
        self.info.labels(**labels, uri=config.model_uri).set(1)
        self._bind(labels)

    def _shadow_side(
        self, config: ServingConfig, labels: dict[str, str]
    ) -> tuple[PredictionMetrics, PairMetrics | None]:
        """shadow_metrics.py's: the prediction distribution and mirrored requests, and the pairs of
        answers only while mirroring (a server without a shadow exports none)."""
        predictions = PredictionMetrics(
            self.registry, labels, buckets=config.prediction_buckets, latency_buckets=LATENCY_BUCKETS
        )
        return predictions, PairMetrics(self.registry, labels) if config.shadow is not None else None

    def _bind(self, labels: dict[str, str]) -> None:
        """The series present at 0 from the start, so rates exist before the first failure, and those
        counted per request bound once: a labels() lookup per request is measurable at thousands of
        requests a second."""
        self.ready.labels(**labels).set(0)
        for kind in get_args(FailureKind):
            self.failures.labels(**labels, kind=kind)
        for code in SERVER_ERROR_CODES:
            self.requests.labels(**labels, code=code)
        self._answered = self.requests.labels(**labels, code="200")
        self._latency = self.latency.labels(**labels)
        self._aged_out = self.aged_out.labels(**labels)

    def observe(
        self,
        *,
        code: int,
        seconds: float,
        cause: str | None = None,
        kind: FailureKind | None = None,
        mirrored: bool = False,
    ) -> None:
        if mirrored:  # shadow traffic: never in the series a canary analysis reads
            self.predictions.observe_mirrored(code=code, seconds=seconds)
            return
        if code == 200:
            self._answered.inc()
        else:
            self.requests.labels(**self._labels, code=str(code)).inc()
        self._latency.observe(seconds)
        if cause is not None:
            self.errors.labels(**self._labels, cause=cause).inc()
        if kind is not None:
            self.failures.labels(**self._labels, kind=kind).inc()

    def observe_predictions(self, predictions: Any, *, mirrored: bool) -> None:
        self.predictions.observe(predictions, mirrored=mirrored)

    def observe_aged_out(self) -> None:
        self._aged_out.inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.labels(**self._labels).observe(size)

    def set_ready(self, ready: bool = True) -> None:
        self.ready.labels(**self._labels).set(1 if ready else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
