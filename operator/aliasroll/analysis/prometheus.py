"""Measuring from a user's Prometheus: PromQL over the series the serving pods export.

Stateless: each measurement asks for the increase of the latency histogram (its count: the
requests; its buckets: the quantile) and of the 5xx request counters over the last analysis
interval, per version, and builds the same windows the pod scraper builds, so the same judge applies
with the same meaning. Prometheus extrapolates an
increase to the ends of the range, so its request counts are estimates (not whole numbers); the
error rate and the quantile, being ratios of counts taken together, are not skewed by it.

The queries select, besides `model` and `version`, the resource's namespace (`namespace="<its
namespace>"`: the label a Kubernetes service discovery's relabelling conventionally sets, as the
Prometheus Operator's PodMonitor and the community chart's pod job do), so another deployment of the
same model version in another namespace is not counted; `namespace_label` renames that label, or
with "" leaves the namespace out. The user's `matchers` are added (one naming the namespace label
replaces the namespace matcher). The queries are evaluated at the target's `read_at`, so the window
is exactly the interval before it.

The address is the resource's to choose, so every query is bounded like any endpoint a tenant
chooses (analysis.fetch): a total deadline (`timeout_seconds`) and a byte budget (MAX_ANSWER_BYTES;
an answer of these aggregated queries is a few kB). The operator's clients (`new_client` with the
egress allow-list) connect only to addresses the allow-list accepts, checked when each connection is
made, as the registry client's are (aliasroll.outbound); a refused address is never sent a byte.
What goes wrong is said in the operator's own words: never the server's `error` text nor any part
of its answer (only its `errorType`, when it is one of Prometheus' own).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2

from aliasroll.analysis.fetch import CallFailed, call
from aliasroll.analysis.provider import AnalysisTarget, TrackWindows
from aliasroll.analysis.window import LATENCY_BUCKET_SERIES, LATENCY_COUNT_SERIES, REQUESTS_SERIES, Window
from aliasroll.errors import AnalysisUnavailable
from aliasroll.outbound import ConnectCheck, GuardedTransport

# A whole query (connect, head, body), not a timeout per read.
DEFAULT_TIMEOUT_SECONDS = 10.0
# An answer of the aggregated queries: a sample per version (and per bucket), a few kB.
MAX_ANSWER_BYTES = 256 * 1024
DEFAULT_NAMESPACE_LABEL = "namespace"
# Prometheus' own error types (its API's errorType): the only part of an error answer shown.
_ERROR_TYPES = frozenset(
    {"bad_data", "timeout", "canceled", "execution", "internal", "unavailable", "not_found", "not_acceptable"}
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the queries set themselves.
_RESERVED = frozenset({"model", "version", "code", "le", "__name__"})
# A query's answer: each series' labels and value.
Samples = list[tuple[dict[str, str], float]]


class PrometheusProvider:
    def __init__(
        self,
        address: str,
        *,
        matchers: Mapping[str, str] | None = None,
        namespace_label: str = DEFAULT_NAMESPACE_LABEL,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        """`address`: the server's base URL (http://prometheus.monitoring:9090, or with a path
        prefix); `matchers`: extra label=value matchers for every query (e.g. the namespace or job
        label the user's scrape configuration sets), so that other deployments' pods are not counted;
        `namespace_label`: the label that carries the pods' namespace ("" for none)."""
        check_source(address, matchers=matchers, namespace_label=namespace_label)
        self._source = address  # as the spec names it: a refused destination is named so
        parts = urlsplit(address.strip())
        self._query_url = address.strip().rstrip("/") + "/api/v1/query"
        # Messages name the server without any credentials in its URL.
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        self.address = urlunsplit((parts.scheme, host, parts.path, "", ""))
        self._matchers = dict(matchers or {})
        self._namespace_label = namespace_label
        self._timeout = timeout_seconds
        self._client = client or new_client(headers=headers, timeout_seconds=timeout_seconds)

    async def measure(self, target: AnalysisTarget) -> TrackWindows:
        if target.interval_seconds < 1:
            raise ValueError(f"interval_seconds must be at least 1, not {target.interval_seconds}")
        requests, errors, buckets = await self._increases(target)
        request_counts = _by_version(requests)
        # No production version (a bake measures its version alone): nothing of production is needed.
        if target.production_version and target.production_version not in request_counts:
            raise AnalysisUnavailable(
                f"{self._no_samples(target, 0)}: check that it scrapes the serving pods' /metrics "
                "(container port admin), that the label matchers match their series"
                f"{self._namespace_hint()}, and that the analysis interval spans at least two scrapes"
            )
        caveat = None
        if target.canary_version not in request_counts:
            # Not a pass, nor a reason to hold without a word: no canary traffic is known, which the
            # judge calls Inconclusive, and the message says why.
            caveat = (
                f"{self._no_samples(target, 1)}, counted as no canary traffic: the canary's pods are "
                "not scraped yet (a pod needs two scrapes in the interval) or not scraped at all"
            )
        error_counts = _by_version(errors)
        bucket_counts = _buckets_by_version(buckets)

        def window(version: str) -> Window:
            return Window(
                requests=request_counts.get(version, 0.0),
                errors=error_counts.get(version, 0.0),
                buckets=tuple(sorted(bucket_counts.get(version, {}).items())),
            )

        since = None
        if target.read_at is not None:
            since = target.read_at - timedelta(seconds=target.interval_seconds)
        return TrackWindows(
            production=window(target.production_version),
            canary=window(target.canary_version),
            seconds=float(target.interval_seconds),
            since=since,
            caveat=caveat,
        )

    async def _increases(self, target: AnalysisTarget) -> list[Samples]:
        """The three queries' samples, asked at once: the requests, the 5xx errors and the latency
        buckets of both versions over the interval."""
        selector = self._selector(target)
        errors_selector = selector[:-1] + ',code=~"5.."}'
        rng = f"[{target.interval_seconds}s]"
        at = None if target.read_at is None else target.read_at.timestamp()
        queries = [
            asyncio.ensure_future(self._query(promql, at=at))
            for promql in (
                f"sum by (version) (increase({LATENCY_COUNT_SERIES}{selector}{rng}))",
                f"sum by (version) (increase({REQUESTS_SERIES}{errors_selector}{rng}))",
                f"sum by (version, le) (increase({LATENCY_BUCKET_SERIES}{selector}{rng}))",
            )
        ]
        try:
            return list(await asyncio.gather(*queries))
        finally:
            for query in queries:  # one failed: the others are not waited for
                query.cancel()

    def _no_samples(self, target: AnalysisTarget, which: int) -> str:
        """What Prometheus lacks of one version (0 production, 1 canary) over the interval."""
        series = f"{LATENCY_COUNT_SERIES}{self._selector(target, which)}"
        return (
            f"Prometheus at {self.address} has no samples of {series} "
            f"over the last {target.interval_seconds} s"
        )

    def forget(self, key: str) -> None:
        """Nothing is kept per resource."""

    async def aclose(self) -> None:
        """Closes the HTTP client (the one it was given too)."""
        await self._client.aclose()

    def _selector(self, target: AnalysisTarget, which: int | None = None) -> str:
        """{model="m",version=~"p|c",extra...}; with `which` (0 production, 1 canary) one version."""
        versions = (target.production_version, target.canary_version)
        if which is None:
            version = f"version=~{_quote('|'.join(re.escape(v) for v in versions if v))}"
        else:
            version = f"version={_quote(versions[which])}"
        matchers = dict(self._matchers)
        if self._namespace_label:
            matchers.setdefault(self._namespace_label, target.namespace)  # the user's matcher wins
        extra = "".join(f",{name}={_quote(value)}" for name, value in sorted(matchers.items()))
        return f"{{model={_quote(target.model)},{version}{extra}}}"

    def _namespace_hint(self) -> str:
        if not self._namespace_label or self._namespace_label in self._matchers:
            return ""
        return (
            f" (the {self._namespace_label} matcher is the resource's namespace: set "
            "analysis.prometheus.namespaceLabel to the label your Prometheus puts the pods' namespace "
            'in, or "" for none)'
        )

    async def _query(self, promql: str, *, at: float | None = None) -> Samples:
        form = {"query": promql}
        if at is not None:
            form["time"] = f"{at:.3f}"
        try:
            answer = await call(
                self._client,
                "POST",
                self._query_url,
                data=form,
                deadline=self._timeout,
                limit=MAX_ANSWER_BYTES,
            )
        except CallFailed as failed:
            if failed.refused is not None:
                raise AnalysisUnavailable(f"analysis.prometheus.address {self._source} {failed}") from None
            raise AnalysisUnavailable(self._failed(str(failed))) from None
        if answer.status in (401, 403):
            raise AnalysisUnavailable(
                f"Prometheus at {self.address} refused the operator (HTTP {answer.status}): "
                "check the credentials it is given"
            )
        body = _json(answer.body)
        if body is None or "status" not in body:
            raise AnalysisUnavailable(
                f"{self.address} answered HTTP {answer.status} without a Prometheus API answer: "
                "give the Prometheus server's base URL, e.g. http://prometheus.monitoring:9090"
            )
        if body.get("status") != "success":
            kind = body.get("errorType")
            raise AnalysisUnavailable(
                f"Prometheus at {self.address} could not run {promql} "
                f"(HTTP {answer.status}, {kind if kind in _ERROR_TYPES else 'an error'})"
            )
        data = body.get("data")
        if (
            not isinstance(data, dict)
            or data.get("resultType") != "vector"
            or not isinstance(data.get("result"), list)
        ):
            raise AnalysisUnavailable(
                f"Prometheus at {self.address} answered {promql} with something other than an instant vector"
            )
        samples: Samples = []
        for series in data["result"]:
            try:
                value = float(series["value"][1])
                labels = {str(k): str(v) for k, v in series.get("metric", {}).items()}
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                raise AnalysisUnavailable(
                    f"Prometheus at {self.address} answered {promql} with a sample it cannot read"
                ) from None
            if math.isfinite(value):
                samples.append((labels, value))
        return samples

    def _failed(self, phrase: str) -> str:
        if phrase.startswith(("could not be connected to", "could not be reached")):
            return (
                f"Prometheus at {self.address} is unreachable ({phrase.removeprefix('could not be ')}): "
                "check the analysis' Prometheus address and that the operator may reach it"
            )
        return f"Prometheus at {self.address} {phrase}"


def check_source(address: str, *, matchers: Mapping[str, str] | None, namespace_label: str) -> None:
    """Raises ValueError for an address, a matcher or a namespace label the queries cannot use."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Prometheus address {address!r}: give a URL such as http://prometheus:9090")
    for name in matchers or {}:
        if not _LABEL_NAME.match(name):
            raise ValueError(f"label matcher {name!r}: not a Prometheus label name")
        if name in _RESERVED:
            raise ValueError(f"label matcher {name!r}: the analysis sets this label itself")
    if namespace_label and not _LABEL_NAME.match(namespace_label):
        raise ValueError(f"namespace label {namespace_label!r}: not a Prometheus label name")
    if namespace_label in _RESERVED:
        raise ValueError(f"namespace label {namespace_label!r}: the analysis sets this label itself")


def new_client(
    *,
    headers: Mapping[str, str] | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    destinations: ConnectCheck | None = None,
) -> httpx2.AsyncClient:
    """An HTTP client for one Prometheus address (it may be shared by the resources that name it),
    connecting only where `destinations` (the egress allow-list; None: anywhere) allows."""
    # No proxy or .netrc from the environment: what the egress check sees is what is called (and
    # httpx follows no redirect unless asked; one that were followed would be checked as well).
    return httpx2.AsyncClient(
        timeout=timeout_seconds,
        headers=dict(headers or {}),
        trust_env=False,
        transport=GuardedTransport(destinations),
    )


def _by_version(samples: Samples) -> dict[str, float]:
    return {labels.get("version", ""): value for labels, value in samples}


def _buckets_by_version(samples: Samples) -> dict[str, dict[float, float]]:
    """{version: {upper bound: count}}; a sample whose `le` is not a number is left out."""
    found: dict[str, dict[float, float]] = {}
    for labels, value in samples:
        try:
            bound = float(labels.get("le", ""))
        except ValueError:
            continue
        found.setdefault(labels.get("version", ""), {})[bound] = value
    return found


def _quote(value: str) -> str:
    # PromQL strings take Go's escapes; JSON's (\" \\ \n \uXXXX) are a subset of them.
    return json.dumps(value)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return found if isinstance(found, dict) else None
