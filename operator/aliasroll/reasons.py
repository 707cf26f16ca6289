"""Condition types, condition reasons and event reasons: the operator's whole vocabulary, in one place.

Reasons are CamelCase, as the Kubernetes API conventions ask, so `kubectl describe`, alerts and
kstatus-based tools (Flux, Argo CD) can match on them.
"""

from typing import Final

# Condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
REGISTRY_REACHABLE: Final = "RegistryReachable"
ALIASES_RESOLVED: Final = "AliasesResolved"
CANARY_HEALTHY: Final = "CanaryHealthy"  # with spec.canary.analysis: the canary's last verdict

# Ready.
SERVING: Final = "Serving"
SCALED_TO_ZERO: Final = "ScaledToZero"  # True: spec.replicas is 0, nothing is wrong
ROLLING_OUT: Final = "RollingOut"
NOTHING_TO_SERVE: Final = "NothingToServe"
INVALID_SPEC: Final = "InvalidSpec"
NOT_ALLOWED: Final = "NotAllowed"  # the operator's allow-lists (ALIASROLL_ALLOWED_*) refuse a value
APPLY_FAILED: Final = "ApplyFailed"
NAME_CONFLICT: Final = (
    "NameConflict"  # a name the operator would create is taken by an object it does not control
)
KUBERNETES_UNAVAILABLE: Final = "KubernetesUnavailable"  # logged and retried, never a condition

# Progressing.
ROLLOUT_COMPLETE: Final = "RolloutComplete"
ROLLOUT_STALLED: Final = "RolloutStalled"
SUSPENDED: Final = "Suspended"  # spec.suspend: alias moves are not followed (also an event)

# RegistryReachable.
REGISTRY_ANSWERED: Final = "RegistryAnswered"
REGISTRY_UNREACHABLE: Final = "RegistryUnreachable"
REGISTRY_AUTH_FAILED: Final = "RegistryAuthFailed"
REGISTRY_REJECTED: Final = "RegistryRejected"
CREDENTIALS_NOT_FOUND: Final = "CredentialsNotFound"
# The trackingUri is not an allowed destination (ALIASROLL_ALLOWED_DESTINATIONS): never called.
DESTINATION_REFUSED: Final = "DestinationRefused"

# AliasesResolved.
RESOLVED: Final = "Resolved"
MODEL_NOT_FOUND: Final = "ModelNotFound"
ALIAS_NOT_FOUND: Final = "AliasNotFound"
VERSION_NOT_FOUND: Final = "VersionNotFound"
VERSION_NOT_READY: Final = "VersionNotReady"
REGISTRY_NOT_CONSULTED: Final = "RegistryNotConsulted"

# Events only (conditions reuse the reasons above for their warnings).
ROLLOUT_STARTED: Final = "RolloutStarted"
ROLLBACK_STARTED: Final = "RollbackStarted"
CANARY_STARTED: Final = "CanaryStarted"
CANARY_UPDATED: Final = "CanaryUpdated"
CANARY_PROMOTED: Final = "CanaryPromoted"
CANARY_REMOVED: Final = "CanaryRemoved"
TRAFFIC_SHIFTED: Final = "TrafficShifted"
# spec.rollback: @production moved to a warm version (or the canary promoted), by routing only.
FAST_ROLLBACK: Final = "FastRollback"
# spec.rollback.bake: the new production measured after a move forward (status.bake says where it is).
BAKE_STARTED: Final = "BakeStarted"
BAKE_PASSED: Final = "BakePassed"
BAKE_FAILED: Final = "BakeFailed"
BAKE_SUPERSEDED: Final = "BakeSuperseded"
# spec.canary.gate: the holdout Job judging a new @canary version before any request.
GATE_STARTED: Final = "GateStarted"
GATE_PASSED: Final = "GatePassed"
GATE_FAILED: Final = "GateFailed"  # a threshold not met (MLflow's validation)
GATE_ERROR: Final = "GateError"  # the Job could not judge (its reason in the message)
# The watched canary (status.canary.phase says where a run is, status.lastCanary.phase how the last one
# ended; these say what happened).
CANARY_STEP: Final = "CanaryStep"
ANALYSIS_PASSED: Final = "AnalysisPassed"
NOT_MEASURED_YET: Final = "NotMeasuredYet"
ANALYSIS_INCONCLUSIVE: Final = "AnalysisInconclusive"
ANALYSIS_FAILED: Final = "AnalysisFailed"
CANARY_ABORTED: Final = "CanaryAborted"
AWAITING_PROMOTION: Final = "AwaitingPromotion"
CANARY_PROMOTING: Final = "CanaryPromoting"
PROMOTION_CALLED_OFF: Final = "PromotionCalledOff"
ALIAS_MOVED: Final = "AliasMoved"
ALIAS_REMOVED: Final = "AliasRemoved"

# Recorded: the registry holds the operator's tags and alias moves.
RECORDED: Final = "Recorded"
RECORDS_WRITTEN: Final = "RecordsWritten"
RECORDS_PENDING: Final = "RecordsPending"
REGISTRY_WRITE_FAILED: Final = "RegistryWriteFailed"

# Canary analysis: the metrics source (the pods' /metrics or a Prometheus) could not be read. Never
# a failed measurement: the step waits, and the message says what to fix.
ANALYSIS_UNAVAILABLE: Final = "AnalysisUnavailable"

# PodCredentials: which registry credentials the serving pods hold (only when a Secret is named).
POD_CREDENTIALS: Final = "PodCredentials"
POD_CREDENTIALS_SET: Final = "PodCredentialsSet"  # True: a Secret of their own (spec.serving)
POD_CREDENTIALS_NOT_SET: Final = "PodCredentialsNotSet"  # the operator has one, the pods none
OPERATOR_CREDENTIALS_SHARED: Final = "OperatorCredentialsShared"  # the pods get the operator's own
