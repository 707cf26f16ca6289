"""The ModelDeployment resource's types: what the operator works with once a body is parsed.

Frozen dataclasses and enums with the CRD's defaults, the API's names, and the env names, labels and
annotations the operator keeps for itself. `spec/parsing.py` and `spec/serving.py` build these from a
resource's body and refuse what the CRD refuses; nothing here parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

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
# spec.rollback's bounds, as the CRD has them.
MAX_ROLLBACK_WINDOW_SECONDS = 24 * 3600
MAX_WARM_VERSIONS = 5
MAX_WARM_FLOOR = 1000


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


class ModelType(StrEnum):
    """spec.canary.gate.modelType: how MLflow's evaluation scores the holdout."""

    CLASSIFIER = "classifier"
    REGRESSOR = "regressor"


@dataclass(frozen=True)
class Threshold:
    """One metric's bounds, in MLflow's MetricThreshold terms: `threshold` is absolute; the changes are
    what the candidate must gain on @production (min_relative_change 0: not worse). Without a
    production version to compare with, only `threshold` applies."""

    metric: str
    higher_is_better: bool
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None

    @property
    def relative(self) -> bool:
        return self.min_absolute_change is not None or self.min_relative_change is not None


@dataclass(frozen=True)
class GateSpec:
    data: str
    target: str
    model_type: ModelType
    thresholds: tuple[Threshold, ...]
    timeout_seconds: float
    dry_run: bool = False  # record the verdict; a failure does not stop the canary


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
    gate: GateSpec | None = None  # spec.canary.gate: a holdout evaluation before any request

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
class BakeSpec:
    """spec.rollback.bake: after @production moves forward while the version it left is warm, the
    new version is measured for `duration_seconds` by the canary's rules; a failure moves it back."""

    duration_seconds: float
    analysis: AnalysisSpec


@dataclass(frozen=True)
class RollbackSpec:
    """spec.rollback: versions kept warm after they leave @production."""

    window_seconds: int = 0  # spec.rollback.window, a duration (0s to 24h)
    max_warm: int = 1  # spec.rollback.maxWarm, 1..5
    floor: int | None = None  # spec.rollback.floor, 1..1000 pods of a warm version; None: spec.replicas
    bake: BakeSpec | None = None  # spec.rollback.bake; None: no bake


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelRef
    registry: RegistrySpec
    replicas: int
    serving: ServingSpec
    traffic: TrafficSpec
    canary: CanarySpec | None = None
    suspend: bool = False  # alias moves are not followed; what runs keeps running
    rollback: RollbackSpec | None = None  # None: spec.rollback is absent (nothing is kept warm)

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


def thawed(value: Any) -> Any:
    """A plain dict/list copy of a frozen value, for a manifest."""
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thawed(item) for item in value]
    return value
