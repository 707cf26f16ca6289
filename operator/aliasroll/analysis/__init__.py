"""Canary analysis: measuring the canary against production over the same window.

`window` (pure) turns the serving pods' counters into what each version answered over an interval;
`judge` (pure) holds the canary to the limits and says passed, failed or inconclusive; the providers
(effectful) read the counters: `pods` from each serving pod's /metrics, `prometheus` from a user's
Prometheus. Both answer the same windows, so the same judge applies to either.
"""

from aliasroll.analysis.judge import Limits, Measurement, MetricResult, Verdict, judge
from aliasroll.analysis.pods import PodMetricsProvider
from aliasroll.analysis.prometheus import PrometheusProvider
from aliasroll.analysis.provider import AnalysisTarget, MetricsProvider, PodEndpoint, TrackWindows
from aliasroll.analysis.window import Counters, Window, parse_counters, window_between

__all__ = [
    "AnalysisTarget",
    "Counters",
    "Limits",
    "Measurement",
    "MetricResult",
    "MetricsProvider",
    "PodEndpoint",
    "PodMetricsProvider",
    "PrometheusProvider",
    "TrackWindows",
    "Verdict",
    "Window",
    "judge",
    "parse_counters",
    "window_between",
]
