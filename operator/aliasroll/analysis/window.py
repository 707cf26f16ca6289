"""What one version answered over an interval, from the counters the serving pods export (pure).

A pod's counters only grow while its container lives; the window of an interval is the difference
between two readings, pod by pod, summed over the pods. The latency quantile is read from the
histogram's buckets the way Prometheus' `histogram_quantile` reads them, so a window taken from the
pods and one taken from a Prometheus give the same answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The serving image's series (aliasroll/serving/metrics.py). Every answer is counted once in the
# latency histogram, whose series exist from the server's start whatever the answers' codes: its
# count is the number of requests. The 5xx come from the requests counter's `code` label.
REQUESTS_SERIES = "aliasroll_serving_requests_total"
LATENCY_BUCKET_SERIES = "aliasroll_serving_request_duration_seconds_bucket"
LATENCY_COUNT_SERIES = "aliasroll_serving_request_duration_seconds_count"
_READ = frozenset({REQUESTS_SERIES, LATENCY_BUCKET_SERIES, LATENCY_COUNT_SERIES})
NOT_EXPOSITION = "not Prometheus exposition text"
# A sample line of one of the series read, and a line that is not of the exposition format (a
# sample line starts with a metric name; else it is a comment or blank).
_SERIES_LINE = re.compile(
    rb"^[ \t]*(?:" + b"|".join(re.escape(name.encode()) for name in sorted(_READ)) + rb")[ \t{][^\n]*", re.M
)
_NOT_A_LINE = re.compile(rb"^(?![ \t]*(?:#|\r?$|[a-zA-Z_:][a-zA-Z0-9_:]*[ \t{]))", re.M)

# (upper bound, cumulative count), ascending bounds, the last one +Inf.
Buckets = tuple[tuple[float, float], ...]


class MetricsFormatError(ValueError):
    """The text is not Prometheus' exposition format (or has a sample the analysis cannot read)."""


@dataclass(frozen=True)
class Counters:
    """Cumulative counts of one pod for one model version, since its container started."""

    requests: float  # every scoring answer, whatever its status
    errors: float  # 5xx answers: the server's or the model's fault, never the client's
    buckets: Buckets = ()


@dataclass(frozen=True)
class Window:
    """What one version answered over an interval, summed over its pods."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: Buckets = ()

    @property
    def error_percent(self) -> float | None:
        if self.requests <= 0:
            return None
        return 100.0 * self.errors / self.requests

    @property
    def p99_seconds(self) -> float | None:
        if self.requests <= 0:
            return None
        return histogram_quantile(0.99, self.buckets)


def is_server_error(code: str) -> bool:
    return len(code) == 3 and code.startswith("5")


def parse_counters(text: str, *, model: str, version: str) -> Counters | None:
    """One pod's counters for `model` at `version`; None when the text has no series of that version
    (a pod still running another version, or not a serving pod). Raises MetricsFormatError."""
    answered = counted = errors = 0.0
    has_count = found = False
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name not in _READ
                    or labels.get("model") != model
                    or labels.get("version") != version
                ):
                    continue
                found = True
                if sample.name == REQUESTS_SERIES:
                    answered += sample.value
                    if is_server_error(labels.get("code", "")):
                        errors += sample.value
                elif sample.name == LATENCY_COUNT_SERIES:
                    has_count = True
                    counted += sample.value
                else:
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    except (ValueError, KeyError, TypeError) as error:
        # Never the parser's words: they quote the text, which the pod wrote.
        raise MetricsFormatError(NOT_EXPOSITION) from error
    if not found:
        return None
    requests = counted if has_count else answered
    return Counters(requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())))


class SeriesLines:
    """Takes a /metrics body piece by piece as it streams in and keeps only the sample lines of the
    series the analysis reads (a serving pod's are a few kB of its body), so what is kept of a body is
    bounded by `limit` whatever the pod sends. Every line is checked to be of the exposition format
    as it arrives; a body that is not stops the reading at once. Raises MetricsFormatError."""

    def __init__(self, *, limit: int, max_line: int) -> None:
        self._limit = limit
        self._max_line = max_line
        self._kept: list[bytes] = []
        self._size = 0
        self._tail = b""  # a line not ended yet

    def feed(self, piece: bytes) -> None:
        data = self._tail + piece
        end = data.rfind(b"\n") + 1
        self._tail = data[end:]
        if len(self._tail) > self._max_line:
            raise MetricsFormatError(f"{NOT_EXPOSITION} (a line longer than {self._max_line} bytes)")
        if end:
            self._take(data[:end])

    def text(self) -> str:
        """The lines kept, once the whole body is read."""
        tail, self._tail = self._tail, b""
        if tail:
            self._take(tail + b"\n")
        try:
            return b"\n".join(self._kept).decode()
        except UnicodeDecodeError:
            raise MetricsFormatError(NOT_EXPOSITION) from None

    def _take(self, lines: bytes) -> None:
        # Whole lines; the regular expressions run over all of them at once, not line by line.
        if _NOT_A_LINE.search(lines):
            raise MetricsFormatError(NOT_EXPOSITION)
        for line in _SERIES_LINE.findall(lines):
            self._size += len(line) + 1
            if self._size > self._limit:
                raise MetricsFormatError(
                    f"more than {self._limit // 1024} KiB of samples of the serving series: not a serving pod"
                )
            self._kept.append(line)


def window_between(before: Mapping[str, Counters], after: Mapping[str, Counters]) -> Window:
    """The window between two readings, keyed by container: the same key must mean the same
    container (the pod reader keys by pod uid and keeps the container's identity beside it), so a
    restarted container comes under a new key, or not at all.

    A key new since `before` counts from zero (its container started within the interval); a key
    any of whose counters went down was restarted all the same, and counts from zero too; a key gone
    from `after` contributes nothing (what it answered since `before` is lost with it, as it is for
    Prometheus).
    """
    return sum_counters(counted_since(before.get(key), now) for key, now in after.items())


def counted_since(then: Counters | None, now: Counters) -> Counters:
    """What one container answered since `then` was read of it: all of `now` when there is no
    `then` or a counter went down (a container that restarted since)."""
    return now if then is None or was_reset(then, now) else _minus(now, then)


def sum_counters(parts: Iterable[Counters]) -> Window:
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for part in parts:
        requests += part.requests
        errors += part.errors
        for bound, count in part.buckets:
            buckets[bound] = buckets.get(bound, 0.0) + count
    return Window(requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())))


def was_reset(then: Counters, now: Counters) -> bool:
    """A counter went down: the container these counts come from is not the one read before."""
    if now.requests < then.requests or now.errors < then.errors:
        return True
    earlier = dict(then.buckets)
    return any(count < earlier.get(bound, 0.0) for bound, count in now.buckets)


def _minus(now: Counters, then: Counters) -> Counters:
    earlier = dict(then.buckets)
    return Counters(
        requests=now.requests - then.requests,
        errors=now.errors - then.errors,
        buckets=tuple((bound, count - earlier.get(bound, 0.0)) for bound, count in now.buckets),
    )


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' histogram_quantile over classic buckets: None where it answers NaN.

    The rank q x count falls in one bucket and is interpolated linearly between that bucket's lower
    and upper bound (the lowest bucket starts at 0); a rank in the +Inf bucket answers the highest
    finite bound. Counts that decrease with the bound (a sum of windows taken at slightly different
    moments) are made monotonic first, as Prometheus does.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or not 0.0 <= q <= 1.0:
        return None
    monotonic: list[tuple[float, float]] = []
    highest = 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        monotonic.append((bound, highest))
    observations = monotonic[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next(i for i, (_, count) in enumerate(monotonic) if count >= rank)
    if index == len(monotonic) - 1:
        return monotonic[-2][0]
    upper, count = monotonic[index]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0
    if index > 0:
        lower, below = monotonic[index - 1]
        count -= below
        rank -= below
    if count <= 0:
        return upper
    return lower + (upper - lower) * (rank / count)
