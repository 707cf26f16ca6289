"""The ModelDeployment resource as the operator reads it.

The CRD's schema and CEL rules reject bad input at `kubectl apply` time; this module turns an accepted
`spec` into frozen dataclasses with the same defaults, so the planner never handles raw dicts. It
still checks what it relies on, because a resource may predate the installed CRD: such a resource
gets an `InvalidSpec` condition naming the field, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from aliasroll.errors import InvalidSpec

GROUP = "aliasroll.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

DEFAULT_PRODUCTION_ALIAS = "production"
DEFAULT_CANARY_ALIAS = "canary"
DEFAULT_POLL_INTERVAL = "30s"
DEFAULT_ANALYSIS_INTERVAL = "30s"
DEFAULT_PROGRESS_DEADLINE = "30m"  # spec.canary.progressDeadline
DEFAULT_MIN_REQUESTS = 20
DEFAULT_FAILURE_LIMIT = 2
DEFAULT_PORT = 8080
# The serving container's admin endpoints (/ready, /live, /metrics, /version): never a Service's port.
DEFAULT_ADMIN_PORT = 9090
MIN_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 24 * 3600.0

# MLflow's own rule for alias names; `v<number>` and `latest` are reserved by the registry.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^([vV]\d+|[lL][aA][tT][eE][sS][tT])$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_PROMETHEUS_LABEL = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)?$")  # a label name, or empty
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Track(StrEnum):
    """A traffic track: which alias a workload follows."""

    PRODUCTION = "production"
    CANARY = "canary"


class RouterKind(StrEnum):
    REPLICAS = "replicas"
    GATEWAY_API = "gatewayAPI"


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str


class Promotion(StrEnum):
    """What happens once a stepped canary passed its last step."""

    AUTO = "auto"  # the operator moves the production alias to the canary version in MLflow
    MANUAL = "manual"  # it waits (AwaitingPromotion) until a human moves the alias


class OnAbort(StrEnum):
    KEEP_ALIAS = "keepAlias"
    REMOVE_ALIAS = "removeAlias"  # the operator deletes the canary alias in MLflow


@dataclass(frozen=True)
class CanaryStep:
    weight: int  # percent of requests
    duration_seconds: float


@dataclass(frozen=True)
class PrometheusSource:
    """Measure with PromQL on the user's Prometheus instead of scraping the pods."""

    address: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    namespace_label: str = "namespace"  # the series' label holding the pods' namespace; "": none


@dataclass(frozen=True)
class AnalysisSpec:
    """spec.canary.analysis: the canary measured against production, once per interval."""

    interval_seconds: float
    min_requests: int  # canary requests per interval below which a measurement is Inconclusive
    failure_limit: int  # failed measurements that abort the canary
    max_error_percent: float | None = None
    max_error_increase_points: float | None = None
    max_p99_seconds: float | None = None
    max_p99_ratio: float | None = None
    prometheus: PrometheusSource | None = None


@dataclass(frozen=True)
class CanarySpec:
    alias: str
    weight: int  # the fixed weight; with steps, the steps set it
    replicas: int | None
    steps: tuple[CanaryStep, ...] = ()
    analysis: AnalysisSpec | None = None
    promotion: Promotion = Promotion.MANUAL
    on_abort: OnAbort = OnAbort.KEEP_ALIAS
    # How long a run may wait for what it needs to move on before it is aborted (0: for ever).
    progress_deadline_seconds: float = 0.0

    @property
    def watched(self) -> bool:
        """Steps or an analysis: a run whose end (promoted, aborted) is kept in status. A plain
        fixed weight keeps today's behaviour: its status goes with its workload."""
        return bool(self.steps) or self.analysis is not None

    @property
    def peak_weight(self) -> int:
        """The most traffic the canary is ever asked to take (sizes its pods under the gatewayAPI router)."""
        return max((step.weight for step in self.steps), default=self.weight)


@dataclass(frozen=True)
class RegistrySpec:
    tracking_uri: str
    credentials_secret: str | None
    poll_seconds: float


DEFAULT_SCRATCH_SIZE = "10Gi"
# Env names the operator sets itself, and pod label/annotation keys it selects or pins versions by:
# the CRD refuses them with a message; parse_serving refuses them for resources older than the CRD.
OPERATOR_ENV = frozenset(
    {
        "MODEL_URI",
        "MLFLOW_TRACKING_URI",
        "PORT",
        "ADMIN_PORT",
        "SCRATCH_DIR",
        "ALIASROLL_TRACK",
        # spec.serving.dependencies and dependencyCache, and the operator's own dependency settings,
        # say these.
        "ALIASROLL_DEPENDENCIES",
        "ALIASROLL_DEPENDENCY_CACHE",
        "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES",
        "ALIASROLL_DIRECT_REFERENCES",
        "ALIASROLL_SOURCE_BUILDS",
    }
)
DEPENDENCY_MODES = ("install", "image")
# What spec.serving.dependencyCache took before the cache became the operator's (ALIASROLL_DEPENDENCY_
# CACHE_*): a resource stored with one of them reads as `enabled: true`; the CRD refuses them.
LEGACY_DEPENDENCY_CACHE_SOURCES = ("hostPath", "persistentVolumeClaim")
OPERATOR_LABELS = frozenset(
    {"app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/component"}
)
OPERATOR_PREFIX = "aliasroll.io/"
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


@dataclass(frozen=True)
class PodSecurity:
    """The user and groups of the serving pods (the operator keeps runAsNonRoot and seccomp)."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class PodSettings:
    """spec.serving.podTemplate: what users add to the pods the operator builds.

    Kubernetes-shaped values (tolerations, affinity, topology spread) are kept as the API server
    validated them, deep-frozen (read-only mappings and tuples), and passed through as they are.
    """

    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    node_selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    image_pull_secrets: tuple[str, ...] = ()
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = ()
    security: PodSecurity = PodSecurity()


@dataclass(frozen=True)
class ServingSpec:
    image: str | None
    port: int
    resources: Mapping[str, Any]
    env: tuple[Mapping[str, Any], ...]
    service_account_name: str | None
    # Where the pods answer /ready, /live, /metrics and /version: probes and the canary analysis read
    # it; the Services route only to `port`.
    admin_port: int = DEFAULT_ADMIN_PORT
    # The Secret pods get with envFrom; None: no credentials (never spec.registry.credentialsSecretRef
    # unless it is named here too: planning/workloads.pod_credentials_secret).
    credentials_secret: str | None = None
    scratch_size: str = DEFAULT_SCRATCH_SIZE
    pod: PodSettings = PodSettings()
    # install: the pods install what a version logged beyond the image; image: the image has it all.
    dependencies: str = "install"
    # The pods keep installed requirements in the operator's dependency cache (where it is, and
    # whether there is one, is the operator's setting; this only says on or off).
    dependency_cache: bool = False


@dataclass(frozen=True)
class ParentRef:
    name: str
    namespace: str | None = None
    group: str | None = None
    kind: str | None = None
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class TrafficSpec:
    router: RouterKind
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelRef
    registry: RegistrySpec
    replicas: int
    serving: ServingSpec
    traffic: TrafficSpec
    canary: CanarySpec | None = None
    suspend: bool = False  # alias moves are not followed; what runs keeps running

    @property
    def canary_wanted(self) -> bool:
        """A canary is asked for when a canary alias is configured with steps or a weight above zero."""
        return self.canary is not None and (bool(self.canary.steps) or self.canary.weight > 0)


@dataclass(frozen=True)
class ResourceRef:
    """Identity of one ModelDeployment, enough to own children and write status."""

    namespace: str
    name: str
    uid: str
    generation: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def parse_duration(text: str, *, field_path: str) -> float:
    """Parses a Go-style duration (`30s`, `1m30s`, `500ms`) into seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise InvalidSpec(field_path, f"{text!r} is not a duration; write it like 30s, 2m or 1m30s")
    return total


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
    model = _mapping(spec, "model", required=True)
    model_name = _string(model, "name", path="spec.model.name", required=True)
    alias = _alias(model.get("alias", DEFAULT_PRODUCTION_ALIAS), path="spec.model.alias")

    registry = _mapping(spec, "registry", required=True)
    tracking_uri = _string(registry, "trackingUri", path="spec.registry.trackingUri", required=True)
    if (problem := tracking_uri_problem(tracking_uri)) is not None:
        raise InvalidSpec("spec.registry.trackingUri", problem)
    secret_ref = registry.get("credentialsSecretRef") or {}
    credentials_secret = secret_ref.get("name") if isinstance(secret_ref, Mapping) else None
    poll_seconds = parse_duration(
        str(registry.get("pollInterval", DEFAULT_POLL_INTERVAL)), field_path="spec.registry.pollInterval"
    )
    if not MIN_POLL_SECONDS <= poll_seconds <= MAX_POLL_SECONDS:
        raise InvalidSpec("spec.registry.pollInterval", "must be between 1s and 24h")

    replicas = _int(spec.get("replicas", 1), path="spec.replicas", low=0, high=1000)

    canary: CanarySpec | None = None
    if (raw_canary := spec.get("canary")) is not None:
        if not isinstance(raw_canary, Mapping):
            raise InvalidSpec("spec.canary", "must be an object")
        canary_alias = _alias(raw_canary.get("alias", DEFAULT_CANARY_ALIAS), path="spec.canary.alias")
        if canary_alias == alias:
            raise InvalidSpec("spec.canary.alias", f"must differ from spec.model.alias ({alias!r})")
        canary = _canary(raw_canary, alias=canary_alias)

    serving = spec.get("serving") or {}
    traffic = spec.get("traffic") or {}
    router_name = traffic.get("router", RouterKind.REPLICAS.value)
    try:
        router = RouterKind(router_name)
    except ValueError:
        known = ", ".join(kind.value for kind in RouterKind)
        raise InvalidSpec(
            "spec.traffic.router", f"{router_name!r} is not a router; use one of: {known}"
        ) from None
    gateway = traffic.get("gatewayAPI") or {}
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise InvalidSpec("spec.suspend", f"must be true or false, got {suspend!r}")
    return ModelDeploymentSpec(
        suspend=suspend,
        model=ModelRef(name=model_name, alias=alias),
        registry=RegistrySpec(
            tracking_uri=tracking_uri, credentials_secret=credentials_secret, poll_seconds=poll_seconds
        ),
        replicas=replicas,
        canary=canary,
        serving=parse_serving(serving),
        traffic=TrafficSpec(
            router=router,
            parent_refs=tuple(
                ParentRef(
                    name=_string(
                        ref, "name", path="spec.traffic.gatewayAPI.parentRefs[].name", required=True
                    ),
                    namespace=ref.get("namespace"),
                    group=ref.get("group"),
                    kind=ref.get("kind"),
                    section_name=ref.get("sectionName"),
                    port=ref.get("port"),
                )
                for ref in gateway.get("parentRefs") or ()
            ),
            hostnames=tuple(gateway.get("hostnames") or ()),
        ),
    )


def _canary(raw: Mapping[str, Any], *, alias: str) -> CanarySpec:
    steps = tuple(
        CanaryStep(
            weight=_int(
                _object(step, path=f"spec.canary.steps[{i}]").get("weight"),
                path=f"spec.canary.steps[{i}].weight",
                low=1,
                high=100,
            ),
            duration_seconds=parse_duration(
                str(step.get("duration", "")), field_path=f"spec.canary.steps[{i}].duration"
            ),
        )
        for i, step in enumerate(_list(raw.get("steps", []), path="spec.canary.steps"))
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
        weight=0 if steps else _int(raw.get("weight"), path="spec.canary.weight", low=0, high=100),
        replicas=None if replicas is None else _int(replicas, path="spec.canary.replicas", low=1, high=1000),
        steps=steps,
        analysis=None if analysis is None else _analysis(_object(analysis, path="spec.canary.analysis")),
        promotion=promotion,
        on_abort=on_abort,
        progress_deadline_seconds=deadline,
    )


def _analysis(raw: Mapping[str, Any]) -> AnalysisSpec:
    path = "spec.canary.analysis"
    interval = parse_duration(
        str(raw.get("interval", DEFAULT_ANALYSIS_INTERVAL)), field_path=f"{path}.interval"
    )
    if interval < 1:
        raise InvalidSpec(f"{path}.interval", "must be at least 1s")
    errors = _object(raw.get("errorRate") or {}, path=f"{path}.errorRate")
    latency = _object(raw.get("latencyP99") or {}, path=f"{path}.latencyP99")
    max_ms = _number(latency.get("maxMilliseconds"), path=f"{path}.latencyP99.maxMilliseconds", low=0)
    prometheus = raw.get("prometheus")
    source: PrometheusSource | None = None
    if prometheus is not None:
        prometheus = _object(prometheus, path=f"{path}.prometheus")
        address = _string(prometheus, "address", path=f"{path}.prometheus.address", required=True)
        if not address.startswith(("http://", "https://")):
            raise InvalidSpec(f"{path}.prometheus.address", f"{address!r} must be an http:// or https:// URL")
        source = PrometheusSource(
            address=address.rstrip("/"),
            labels=MappingProxyType(
                dict(_strings(prometheus.get("labels"), path=f"{path}.prometheus.labels"))
            ),
            namespace_label=_namespace_label(prometheus.get("namespaceLabel", "namespace"), path=path),
        )
    spec = AnalysisSpec(
        interval_seconds=interval,
        min_requests=_int(
            raw.get("minRequests", DEFAULT_MIN_REQUESTS), path=f"{path}.minRequests", low=1, high=10**9
        ),
        failure_limit=_int(
            raw.get("failureLimit", DEFAULT_FAILURE_LIMIT), path=f"{path}.failureLimit", low=1, high=1000
        ),
        max_error_percent=_number(
            errors.get("maxPercent"), path=f"{path}.errorRate.maxPercent", low=0, high=100
        ),
        max_error_increase_points=_number(
            errors.get("maxIncreasePoints"), path=f"{path}.errorRate.maxIncreasePoints", low=0, high=100
        ),
        max_p99_seconds=None if max_ms is None else max_ms / 1000,
        max_p99_ratio=_number(latency.get("maxRatio"), path=f"{path}.latencyP99.maxRatio", low=1),
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


def _number(value: object, *, path: str, low: float, high: float | None = None) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < low
        or (high is not None and value > high)
    ):
        within = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidSpec(path, f"must be a number {within}, got {value!r}")
    return float(value)


def _mapping(parent: Mapping[str, Any], key: str, *, required: bool) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"spec.{key}", "is required" if value is None else "must be an object")
    return value


def _string(parent: Mapping[str, Any], key: str, *, path: str, required: bool) -> str:
    value = parent.get(key)
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidSpec(path, "is required and must be a non-empty string")
    return value


def _alias(value: object, *, path: str) -> str:
    if not isinstance(value, str) or not _ALIAS.match(value):
        raise InvalidSpec(path, f"{value!r} is not an MLflow alias (letters, digits, '_' and '-')")
    if _RESERVED_ALIAS.match(value):
        raise InvalidSpec(path, f"{value!r} is reserved by the MLflow registry (v<number>, latest)")
    return value


def _int(value: object, *, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(path, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_serving(raw: object) -> ServingSpec:
    """spec.serving, checked as the CRD checks it (a resource may predate the installed CRD)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.serving", "must be an object")
    env = _list(raw.get("env"), path="spec.serving.env")
    seen: set[str] = set()
    for item in env:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidSpec("spec.serving.env", "every item needs a name")
        if name in OPERATOR_ENV:
            raise InvalidSpec("spec.serving.env", f"cannot set {name}: the operator sets it")
        if name in seen:
            # Server-side apply refuses a Deployment whose env names repeat.
            raise InvalidSpec("spec.serving.env", f"{name} is set twice; names must be unique")
        seen.add(name)
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidSpec("spec.serving.resources", "must be an object")
    scratch_size = str(raw.get("scratchSize", DEFAULT_SCRATCH_SIZE))
    if not _QUANTITY.match(scratch_size):
        raise InvalidSpec("spec.serving.scratchSize", f"{scratch_size!r} is not a quantity such as 10Gi")
    secret_ref = raw.get("credentialsSecretRef")
    dependencies = raw.get("dependencies", "install")
    if dependencies not in DEPENDENCY_MODES:
        raise InvalidSpec(
            "spec.serving.dependencies",
            f"{dependencies!r}: use install (the pods install what the version logged beyond the image) "
            "or image (the image has every requirement)",
        )
    raw_cache = raw.get("dependencyCache")
    cache = _object(raw_cache, path="spec.serving.dependencyCache")
    enabled = cache.get("enabled", True) if raw_cache is not None else False
    if not isinstance(enabled, bool):
        raise InvalidSpec("spec.serving.dependencyCache.enabled", f"must be true or false, got {enabled!r}")
    unknown = sorted(set(cache) - {"enabled", *LEGACY_DEPENDENCY_CACHE_SOURCES})
    if unknown:
        raise InvalidSpec(
            "spec.serving.dependencyCache",
            f"takes only enabled (the operator's settings say where the cache is), not {', '.join(unknown)}",
        )
    port = _int(raw.get("port", DEFAULT_PORT), path="spec.serving.port", low=1, high=65535)
    admin_port = _int(
        raw.get("adminPort", DEFAULT_ADMIN_PORT), path="spec.serving.adminPort", low=1, high=65535
    )
    if admin_port == port:
        raise InvalidSpec(
            "spec.serving.adminPort",
            f"{admin_port} is spec.serving.port too: the admin endpoints (/metrics, /ready, ...) have a "
            "port of their own, which Services do not route to",
        )
    return ServingSpec(
        image=raw.get("image") or None,
        port=port,
        admin_port=admin_port,
        resources=_frozen(resources),
        env=tuple(_frozen(item) for item in env),
        service_account_name=raw.get("serviceAccountName") or None,
        credentials_secret=(secret_ref.get("name") or None) if isinstance(secret_ref, Mapping) else None,
        scratch_size=scratch_size,
        pod=_pod_settings(raw.get("podTemplate")),
        dependencies=str(dependencies),
        dependency_cache=enabled,
    )


def _pod_settings(raw: object) -> PodSettings:
    path = "spec.serving.podTemplate"
    if raw is None:
        return PodSettings()
    if not isinstance(raw, Mapping):
        raise InvalidSpec(path, "must be an object")
    meta = _object(raw.get("metadata"), path=f"{path}.metadata")
    pod = _object(raw.get("spec"), path=f"{path}.spec")
    labels = _strings(meta.get("labels"), path=f"{path}.metadata.labels")
    for key in labels:
        if key in OPERATOR_LABELS or key.startswith(OPERATOR_PREFIX):
            raise InvalidSpec(
                f"{path}.metadata.labels", f"cannot set {key}: the operator selects its pods by it"
            )
    annotations = _strings(meta.get("annotations"), path=f"{path}.metadata.annotations")
    for key in annotations:
        if key.startswith(OPERATOR_PREFIX):
            raise InvalidSpec(f"{path}.metadata.annotations", f"cannot set {key}: the operator sets it")
    security = _object(pod.get("securityContext"), path=f"{path}.spec.securityContext")
    secrets = _list(pod.get("imagePullSecrets"), path=f"{path}.spec.imagePullSecrets")
    affinity = pod.get("affinity")
    return PodSettings(
        labels=MappingProxyType(dict(labels)),
        annotations=MappingProxyType(dict(annotations)),
        node_selector=MappingProxyType(
            dict(_strings(pod.get("nodeSelector"), path=f"{path}.spec.nodeSelector"))
        ),
        tolerations=tuple(
            _frozen(item) for item in _list(pod.get("tolerations"), path=f"{path}.spec.tolerations")
        ),
        affinity=_frozen(_object(affinity, path=f"{path}.spec.affinity")) if affinity else None,
        image_pull_secrets=tuple(
            str(item["name"]) for item in secrets if isinstance(item, Mapping) and item.get("name")
        ),
        priority_class_name=pod.get("priorityClassName") or None,
        runtime_class_name=pod.get("runtimeClassName") or None,
        topology_spread_constraints=tuple(
            _frozen(item)
            for item in _list(
                pod.get("topologySpreadConstraints"), path=f"{path}.spec.topologySpreadConstraints"
            )
        ),
        security=PodSecurity(
            run_as_user=_id(security.get("runAsUser"), path=f"{path}.spec.securityContext.runAsUser", low=1),
            run_as_group=_id(
                security.get("runAsGroup"), path=f"{path}.spec.securityContext.runAsGroup", low=1
            ),
            fs_group=_id(security.get("fsGroup"), path=f"{path}.spec.securityContext.fsGroup", low=1),
            supplemental_groups=tuple(
                _group(group, path=f"{path}.spec.securityContext.supplementalGroups")
                for group in _list(
                    security.get("supplementalGroups"), path=f"{path}.spec.securityContext.supplementalGroups"
                )
            ),
        ),
    )


_MAX_ID = 2**31 - 1


def _id(value: object, *, path: str, low: int) -> int | None:
    if value is None:
        return None
    return _group(value, path=path) if low == 1 else _int(value, path=path, low=low, high=_MAX_ID)


def _group(value: object, *, path: str) -> int:
    """A user or group id of the serving pods: never 0 (root, or the root group, which opens the
    root-group-writable files of volumes and of the node to them)."""
    if value == 0 and not isinstance(value, bool):
        raise InvalidSpec(
            path,
            "cannot be 0: serving pods run as non-root"
            if path.endswith("runAsUser")
            else "cannot be 0: serving pods run without the root group",
        )
    return _int(value, path=path, low=1, high=_MAX_ID)


def _object(value: object, *, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(path, "must be an object")
    return value


def _list(value: object, *, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidSpec(path, "must be a list")
    return list(value)


def _namespace_label(value: object, *, path: str) -> str:
    where = f"{path}.prometheus.namespaceLabel"
    if not isinstance(value, str) or len(value) > 128 or not _PROMETHEUS_LABEL.match(value):
        raise InvalidSpec(where, f"{value!r} is not a Prometheus label name (or empty for none)")
    if value in ("model", "version", "code", "le"):
        raise InvalidSpec(where, f"{value!r} is a label the analysis sets itself")
    return value


def _strings(value: object, *, path: str) -> Mapping[str, str]:
    mapping = _object(value, path=path)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise InvalidSpec(path, f"the value of {key} must be a string")
    return mapping


def _frozen(value: Any) -> Any:
    """A read-only deep copy of a JSON value: the spec must not change under the planner."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value


def thawed(value: Any) -> Any:
    """A plain dict/list copy of a frozen value, for a manifest."""
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thawed(item) for item in value]
    return value
