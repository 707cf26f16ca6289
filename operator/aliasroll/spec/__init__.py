"""The ModelDeployment resource as the operator reads it.

The CRD's schema and CEL rules reject bad input at `kubectl apply` time; this package turns an accepted
`spec` into frozen dataclasses with the same defaults, so the planner never handles raw dicts. It
still checks what it relies on, because a resource may predate the installed CRD: such a resource
gets an `InvalidSpec` condition naming the field, never a crash.

`types.py` holds what the operator works with (and imports nothing of the parsing), `parsing.py`
builds it from a body (`parse_spec`), `serving.py` reads spec.serving, and `fields.py` holds the
readers of one value the two share. Import from `aliasroll.spec`: these are its names.
"""

from aliasroll.spec.fields import parse_duration
from aliasroll.spec.parsing import parse_spec, tracking_uri_problem
from aliasroll.spec.serving import parse_serving
from aliasroll.spec.types import (
    API_VERSION,
    DEFAULT_ADMIN_PORT,
    DEFAULT_ANALYSIS_INTERVAL,
    DEFAULT_CANARY_ALIAS,
    DEFAULT_FAILURE_LIMIT,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_PRODUCTION_ALIAS,
    DEFAULT_PROGRESS_DEADLINE,
    DEFAULT_SCRATCH_SIZE,
    DEPENDENCY_MODES,
    GROUP,
    KIND,
    LEGACY_DEPENDENCY_CACHE_SOURCES,
    MAX_POLL_SECONDS,
    MIN_POLL_SECONDS,
    OPERATOR_ENV,
    OPERATOR_LABELS,
    OPERATOR_PREFIX,
    PLURAL,
    VERSION,
    AnalysisSpec,
    CanarySpec,
    CanaryStep,
    ModelDeploymentSpec,
    ModelRef,
    OnAbort,
    ParentRef,
    PodSecurity,
    PodSettings,
    PrometheusSource,
    Promotion,
    RegistrySpec,
    ResourceRef,
    RouterKind,
    ServingSpec,
    Track,
    TrafficSpec,
    thawed,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_ANALYSIS_INTERVAL",
    "DEFAULT_CANARY_ALIAS",
    "DEFAULT_FAILURE_LIMIT",
    "DEFAULT_MIN_REQUESTS",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_PRODUCTION_ALIAS",
    "DEFAULT_PROGRESS_DEADLINE",
    "DEFAULT_SCRATCH_SIZE",
    "DEPENDENCY_MODES",
    "GROUP",
    "KIND",
    "LEGACY_DEPENDENCY_CACHE_SOURCES",
    "MAX_POLL_SECONDS",
    "MIN_POLL_SECONDS",
    "OPERATOR_ENV",
    "OPERATOR_LABELS",
    "OPERATOR_PREFIX",
    "PLURAL",
    "VERSION",
    "AnalysisSpec",
    "CanarySpec",
    "CanaryStep",
    "ModelDeploymentSpec",
    "ModelRef",
    "OnAbort",
    "ParentRef",
    "PodSecurity",
    "PodSettings",
    "PrometheusSource",
    "Promotion",
    "RegistrySpec",
    "ResourceRef",
    "RouterKind",
    "ServingSpec",
    "Track",
    "TrafficSpec",
    "parse_duration",
    "parse_serving",
    "parse_spec",
    "thawed",
    "tracking_uri_problem",
]
