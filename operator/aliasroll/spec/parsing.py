"""A ModelDeployment's `spec`, parsed into the frozen dataclasses of spec/types.py with the CRD's
defaults (spec.serving in spec/serving.py). The CRD refuses bad input first; the parser still checks
what it relies on, because a resource may predate the installed CRD: InvalidSpec names the field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aliasroll.errors import InvalidSpec
from aliasroll.spec.fields import integer, json_list, json_object, number, parse_duration, string, string_map
from aliasroll.spec.gate import parse_gate
from aliasroll.spec.serving import parse_serving
from aliasroll.spec.types import (
    DEFAULT_ANALYSIS_INTERVAL,
    DEFAULT_CANARY_ALIAS,
    DEFAULT_FAILURE_LIMIT,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PRODUCTION_ALIAS,
    DEFAULT_PROGRESS_DEADLINE,
    MAX_POLL_SECONDS,
    MAX_ROLLBACK_WINDOW_SECONDS,
    MAX_WARM_FLOOR,
    MAX_WARM_VERSIONS,
    MIN_POLL_SECONDS,
    AnalysisSpec,
    BakeSpec,
    CanarySpec,
    CanaryStep,
    ModelDeploymentSpec,
    ModelRef,
    OnAbort,
    ParentRef,
    PrometheusSource,
    Promotion,
    RegistrySpec,
    RollbackSpec,
    RouterKind,
    TrafficSpec,
)

# MLflow's own rule for alias names; `v<number>` and `latest` are reserved by the registry.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^([vV]\d+|[lL][aA][tT][eE][sS][tT])$")
_PROMETHEUS_LABEL = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")  # a label name, or empty


def tracking_uri_problem(uri: str) -> str | None:
    """What is wrong with a trackingUri (as the CRD's rules say it), or None. MLflow appends its API
    path (/api/2.0/mlflow/...) to the URL: a base path is kept (a server under /mlflow), but a query
    or fragment would swallow that path and let the URL pick any path and query on the host."""
    if not re.match(r"^https?://[^/?#]+", uri):
        return f"{uri!r} must be an http:// or https:// URL"
    if re.match(r"^https?://[^/?#]*@", uri):
        return "must not hold credentials; put them in a Secret named by spec.registry.credentialsSecretRef"
    if "?" in uri or "#" in uri:
        return (
            f"{uri!r} must not have a query (?) or fragment (#): it is the MLflow server's base URL, "
            "to which MLflow appends /api/2.0/mlflow/..."
        )
    return None


def parse_spec(spec: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Builds the typed spec, applying the CRD's defaults; raises InvalidSpec naming the bad field."""
    model = _model(spec)
    registry = _registry(spec)
    replicas = integer(spec.get("replicas", 1), path="spec.replicas", low=0, high=1000)
    canary = _optional_canary(spec.get("canary"), production_alias=model.alias)
    serving = spec.get("serving") or {}
    traffic = spec.get("traffic") or {}
    router = _router(traffic)
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise InvalidSpec("spec.suspend", f"must be true or false, got {suspend!r}")
    return ModelDeploymentSpec(
        suspend=suspend,
        model=model,
        registry=registry,
        replicas=replicas,
        canary=canary,
        serving=parse_serving(serving),
        traffic=_traffic(traffic, router=router),
        rollback=_optional_rollback(spec.get("rollback")),
    )


def _model(spec: Mapping[str, Any]) -> ModelRef:
    model = _section(spec, "model", required=True)
    name = string(model, "name", path="spec.model.name", required=True)
    alias = _alias(model.get("alias", DEFAULT_PRODUCTION_ALIAS), path="spec.model.alias")
    return ModelRef(name=name, alias=alias)


def _registry(spec: Mapping[str, Any]) -> RegistrySpec:
    registry = _section(spec, "registry", required=True)
    tracking_uri = string(registry, "trackingUri", path="spec.registry.trackingUri", required=True)
    if (problem := tracking_uri_problem(tracking_uri)) is not None:
        raise InvalidSpec("spec.registry.trackingUri", problem)
    secret_ref = registry.get("credentialsSecretRef") or {}
    credentials_secret = secret_ref.get("name") if isinstance(secret_ref, Mapping) else None
    poll_seconds = parse_duration(
        str(registry.get("pollInterval", DEFAULT_POLL_INTERVAL)), field_path="spec.registry.pollInterval"
    )
    if not MIN_POLL_SECONDS <= poll_seconds <= MAX_POLL_SECONDS:
        raise InvalidSpec("spec.registry.pollInterval", "must be between 1s and 24h")
    return RegistrySpec(
        tracking_uri=tracking_uri, credentials_secret=credentials_secret, poll_seconds=poll_seconds
    )


def _optional_canary(raw: object, *, production_alias: str) -> CanarySpec | None:
    """spec.canary, when there is one: its alias must differ from the production one."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.canary", "must be an object")
    alias = _alias(raw.get("alias", DEFAULT_CANARY_ALIAS), path="spec.canary.alias")
    if alias == production_alias:
        raise InvalidSpec("spec.canary.alias", f"must differ from spec.model.alias ({production_alias!r})")
    return _canary(raw, alias=alias)


def _optional_rollback(raw: object) -> RollbackSpec | None:
    """spec.rollback, when there is one."""
    if raw is None:
        return None
    rollback = json_object(raw, path="spec.rollback")
    window = parse_duration(
        string(rollback, "window", path="spec.rollback.window", required=True),
        field_path="spec.rollback.window",
    )
    if window > MAX_ROLLBACK_WINDOW_SECONDS:
        raise InvalidSpec("spec.rollback.window", "must be at most 24h")
    floor = rollback.get("floor")
    bake = rollback.get("bake")
    return RollbackSpec(
        # Whole seconds, rounded up: a window the CRD accepts (250ms) never reads as none (0s).
        window_seconds=math.ceil(window),
        max_warm=integer(
            rollback.get("maxWarm", 1), path="spec.rollback.maxWarm", low=1, high=MAX_WARM_VERSIONS
        ),
        floor=None
        if floor is None
        else integer(floor, path="spec.rollback.floor", low=1, high=MAX_WARM_FLOOR),
        bake=None if bake is None else _bake(json_object(bake, path="spec.rollback.bake"), window=window),
    )


def _bake(raw: Mapping[str, Any], *, window: float) -> BakeSpec:
    """spec.rollback.bake: a duration within the window (a bake needs the version it left warm) and
    the canary analysis' rules."""
    path = "spec.rollback.bake"
    duration = parse_duration(
        string(raw, "duration", path=f"{path}.duration", required=True), field_path=f"{path}.duration"
    )
    if duration > window:
        raise InvalidSpec(
            f"{path}.duration",
            "must be at most spec.rollback.window (a bake needs the version it left warm): shorten it or "
            "lengthen the window",
        )
    analysis = raw.get("analysis")
    if analysis is None:
        raise InvalidSpec(f"{path}.analysis", "is required")
    rules = _analysis(json_object(analysis, path=f"{path}.analysis"), path=f"{path}.analysis")
    if rules.max_error_percent is None and rules.max_p99_seconds is None:
        raise InvalidSpec(
            f"{path}.analysis",
            "needs errorRate.maxPercent and/or latencyP99.maxMilliseconds: the warm version takes no "
            "requests, so relative bounds have nothing to compare with",
        )
    return BakeSpec(duration_seconds=duration, analysis=rules)


def _router(traffic: Mapping[str, Any]) -> RouterKind:
    router_name = traffic.get("router", RouterKind.REPLICAS.value)
    try:
        return RouterKind(router_name)
    except ValueError:
        known = ", ".join(kind.value for kind in RouterKind)
        raise InvalidSpec(
            "spec.traffic.router", f"{router_name!r} is not a router; use one of: {known}"
        ) from None


def _traffic(traffic: Mapping[str, Any], *, router: RouterKind) -> TrafficSpec:
    gateway = traffic.get("gatewayAPI") or {}
    return TrafficSpec(
        router=router,
        parent_refs=tuple(
            ParentRef(
                name=string(ref, "name", path="spec.traffic.gatewayAPI.parentRefs[].name", required=True),
                namespace=ref.get("namespace"),
                group=ref.get("group"),
                kind=ref.get("kind"),
                section_name=ref.get("sectionName"),
                port=ref.get("port"),
            )
            for ref in gateway.get("parentRefs") or ()
        ),
        hostnames=tuple(gateway.get("hostnames") or ()),
    )


def _canary(raw: Mapping[str, Any], *, alias: str) -> CanarySpec:
    steps = tuple(
        CanaryStep(
            weight=integer(
                json_object(step, path=f"spec.canary.steps[{i}]").get("weight"),
                path=f"spec.canary.steps[{i}].weight",
                low=1,
                high=100,
            ),
            duration_seconds=parse_duration(
                str(step.get("duration", "")), field_path=f"spec.canary.steps[{i}].duration"
            ),
        )
        for i, step in enumerate(json_list(raw.get("steps", []), path="spec.canary.steps"))
    )
    if steps and raw.get("weight") is not None:
        raise InvalidSpec(
            "spec.canary.weight", "must be left out when spec.canary.steps is set: the steps set the weight"
        )
    if not steps and raw.get("weight") is None:
        raise InvalidSpec("spec.canary", "needs either weight (a fixed share) or steps")
    replicas = raw.get("replicas")
    try:
        promotion = Promotion(raw.get("promotion", Promotion.MANUAL.value))
    except ValueError:
        raise InvalidSpec(
            "spec.canary.promotion", f"{raw.get('promotion')!r} is not auto or manual"
        ) from None
    try:
        on_abort = OnAbort(raw.get("onAbort", OnAbort.KEEP_ALIAS.value))
    except ValueError:
        raise InvalidSpec(
            "spec.canary.onAbort", f"{raw.get('onAbort')!r} is not keepAlias or removeAlias"
        ) from None
    analysis = raw.get("analysis")
    deadline = parse_duration(
        str(raw.get("progressDeadline", DEFAULT_PROGRESS_DEADLINE)), field_path="spec.canary.progressDeadline"
    )
    return CanarySpec(
        alias=alias,
        weight=0 if steps else integer(raw.get("weight"), path="spec.canary.weight", low=0, high=100),
        replicas=(
            None if replicas is None else integer(replicas, path="spec.canary.replicas", low=1, high=1000)
        ),
        steps=steps,
        analysis=None
        if analysis is None
        else _analysis(json_object(analysis, path="spec.canary.analysis"), path="spec.canary.analysis"),
        promotion=promotion,
        on_abort=on_abort,
        progress_deadline_seconds=deadline,
        gate=None
        if raw.get("gate") is None
        else parse_gate(json_object(raw["gate"], path="spec.canary.gate")),
    )


def _analysis(raw: Mapping[str, Any], *, path: str) -> AnalysisSpec:
    """An analysis' rules (spec.canary.analysis, spec.rollback.bake.analysis), field paths under `path`."""
    interval = parse_duration(
        str(raw.get("interval", DEFAULT_ANALYSIS_INTERVAL)), field_path=f"{path}.interval"
    )
    if interval < 1:
        raise InvalidSpec(f"{path}.interval", "must be at least 1s")
    errors = json_object(raw.get("errorRate") or {}, path=f"{path}.errorRate")
    latency = json_object(raw.get("latencyP99") or {}, path=f"{path}.latencyP99")
    max_ms = number(latency.get("maxMilliseconds"), path=f"{path}.latencyP99.maxMilliseconds", low=0)
    prometheus = raw.get("prometheus")
    source: PrometheusSource | None = None
    if prometheus is not None:
        prometheus = json_object(prometheus, path=f"{path}.prometheus")
        address = string(prometheus, "address", path=f"{path}.prometheus.address", required=True)
        if not address.startswith(("http://", "https://")):
            raise InvalidSpec(f"{path}.prometheus.address", f"{address!r} must be an http:// or https:// URL")
        source = PrometheusSource(
            address=address.rstrip("/"),
            labels=MappingProxyType(
                dict(string_map(prometheus.get("labels"), path=f"{path}.prometheus.labels"))
            ),
            namespace_label=_namespace_label(prometheus.get("namespaceLabel", "namespace"), path=path),
        )
    spec = AnalysisSpec(
        interval_seconds=interval,
        min_requests=integer(
            raw.get("minRequests", DEFAULT_MIN_REQUESTS), path=f"{path}.minRequests", low=1, high=10**9
        ),
        failure_limit=integer(
            raw.get("failureLimit", DEFAULT_FAILURE_LIMIT), path=f"{path}.failureLimit", low=1, high=1000
        ),
        max_error_percent=number(
            errors.get("maxPercent"), path=f"{path}.errorRate.maxPercent", low=0, high=100
        ),
        max_error_increase_points=number(
            errors.get("maxIncreasePoints"), path=f"{path}.errorRate.maxIncreasePoints", low=0, high=100
        ),
        max_p99_seconds=None if max_ms is None else max_ms / 1000,
        max_p99_ratio=number(latency.get("maxRatio"), path=f"{path}.latencyP99.maxRatio", low=1),
        prometheus=source,
    )
    if all(
        bound is None
        for bound in (
            spec.max_error_percent,
            spec.max_error_increase_points,
            spec.max_p99_seconds,
            spec.max_p99_ratio,
        )
    ):
        raise InvalidSpec(path, "names no bound: set errorRate and/or latencyP99 limits")
    return spec


def _section(parent: Mapping[str, Any], key: str, *, required: bool) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"spec.{key}", "is required" if value is None else "must be an object")
    return value


def _alias(value: object, *, path: str) -> str:
    if not isinstance(value, str) or not _ALIAS.match(value):
        raise InvalidSpec(path, f"{value!r} is not an MLflow alias (letters, digits, '_' and '-')")
    if _RESERVED_ALIAS.match(value):
        raise InvalidSpec(path, f"{value!r} is reserved by the MLflow registry (v<number>, latest)")
    return value


def _namespace_label(value: object, *, path: str) -> str:
    where = f"{path}.prometheus.namespaceLabel"
    if not isinstance(value, str) or len(value) > 128 or not _PROMETHEUS_LABEL.match(value):
        raise InvalidSpec(where, f"{value!r} is not a Prometheus label name (or empty for none)")
    if value in ("model", "version", "code", "le"):
        raise InvalidSpec(where, f"{value!r} is a label the analysis sets itself")
    return value
