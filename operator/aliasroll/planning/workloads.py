"""Manifests of the objects every router needs: one Deployment per track, and Services.

Names: `<name>-production` and `<name>-canary` for the Deployments (and for the per-track Services
of routers that need them), `<name>` for the Service clients call. The version is pinned in the pod
template (env, labels, annotations), so an alias move is a rolling update Kubernetes understands and
`kubectl rollout status deployment/<name>-production` follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aliasroll.planning.state import ServedVersion
from aliasroll.spec import API_VERSION, KIND, ModelDeploymentSpec, ResourceRef, ServingSpec, Track, thawed

Manifest = dict[str, Any]

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER = "aliasroll.io/modeldeployment"
LABEL_TRACK = "aliasroll.io/track"
LABEL_VERSION = "aliasroll.io/model-version"
ANNOTATION_MODEL_URI = "aliasroll.io/model-uri"
ANNOTATION_RUN_ID = "aliasroll.io/run-id"
MANAGER = "aliasroll"

CONTAINER_NAME = "model-server"
SERVICE_PORT = 80
SCRATCH_PATH = "/scratch"
DEPENDENCY_CACHE_PATH = "/var/cache/aliasroll/dependencies"
# The serving image's contract (serving-image/README): readiness means loaded and warmed up.
READINESS_PATH = "/ready"
LIVENESS_PATH = "/live"
# Drain: on delete, the pod keeps serving during preStop while endpoints drop it (kube-proxy and
# gateways take a few seconds to notice); then SIGTERM and the server drains in-flight requests
# (DRAIN_SECONDS, 20 by default in the serving image). The grace period covers both with margin,
# so the kubelet never SIGKILLs a pod that is still answering.
PRE_STOP_SECONDS = 5
SERVER_DRAIN_SECONDS = 20
TERMINATION_GRACE_SECONDS = 40


@dataclass(frozen=True)
class WorkloadDefaults:
    """Operator-wide settings that shape workloads."""

    image: str = "ghcr.io/aliasroll/serving:0.1.0"
    progress_deadline_seconds: int = 600


def common_labels(owner: ResourceRef) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_INSTANCE: owner.name,
        LABEL_COMPONENT: "model-server",
        LABEL_OWNER: owner.name,
    }


def workload_name(owner: ResourceRef, track: Track) -> str:
    return f"{owner.name}-{track.value}"


def owner_reference(owner: ResourceRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: ResourceRef, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def track_selector(owner: ResourceRef, track: Track) -> dict[str, str]:
    # Deployment selectors are immutable: never put the version in them.
    return {LABEL_OWNER: owner.name, LABEL_TRACK: track.value}


def deployment(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    track: Track,
    version: ServedVersion,
    replicas: int,
    defaults: WorkloadDefaults,
) -> Manifest:
    labels = {**common_labels(owner), LABEL_TRACK: track.value, LABEL_VERSION: version.version}
    annotations = {ANNOTATION_MODEL_URI: version.uri}
    if version.run_id:
        annotations[ANNOTATION_RUN_ID] = version.run_id
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.serving.image or defaults.image,
        "ports": [{"name": "http", "containerPort": spec.serving.port, "protocol": "TCP"}],
        "env": _env(spec, track=track, version=version),
        "readinessProbe": _probe(READINESS_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVENESS_PATH, period=10, failures=3),
        # Downloading and loading a model can take minutes; liveness waits for it.
        "startupProbe": _probe(LIVENESS_PATH, period=5, failures=120),
        # The sleep action needs no binary in the image.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        # Why a version cannot start (a requirement the index lacks, ...) reaches the pod's status,
        # where the operator reads it for the RolloutStalled condition (kube/observe.py).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.serving.dependency_cache is not None:
        container["volumeMounts"].append({"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH})
    if spec.serving.resources:
        container["resources"] = thawed(spec.serving.resources)
    if secret := pod_credentials_secret(spec):
        # The Secret's keys are MLflow's own variable names (MLFLOW_TRACKING_USERNAME, ...).
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    template_labels = {**spec.serving.pod.labels, **labels}
    template_annotations = {**spec.serving.pod.annotations, **annotations}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, workload_name(owner, track), labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": track_selector(owner, track)},
            # Never fewer ready pods than asked for during a roll: new pods come up first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": defaults.progress_deadline_seconds,
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": pod_spec(spec.serving, container),
            },
        },
    }


def pod_credentials_secret(spec: ModelDeploymentSpec) -> str | None:
    """The Secret pods get MLflow credentials from: their own (say, read-only), else the operator's."""
    return spec.serving.credentials_secret or spec.registry.credentials_secret


def pod_spec(serving: ServingSpec, container: dict[str, Any]) -> dict[str, Any]:
    """The operator's pod with spec.serving.podTemplate merged in: the operator's settings win."""
    pod = serving.pod
    security: dict[str, Any] = {
        key: value
        for key, value in (
            ("runAsUser", pod.security.run_as_user),
            ("runAsGroup", pod.security.run_as_group),
            ("fsGroup", pod.security.fs_group),
            ("supplementalGroups", list(pod.security.supplemental_groups) or None),
        )
        if value is not None
    }
    security.update({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}})
    # No API access unless the user gives the pods an identity of their own.
    result: dict[str, Any] = {"automountServiceAccountToken": bool(serving.service_account_name)}
    if serving.service_account_name:
        result["serviceAccountName"] = serving.service_account_name
    optional: dict[str, Any] = {
        "nodeSelector": thawed(pod.node_selector),
        "tolerations": thawed(pod.tolerations),
        "affinity": thawed(pod.affinity),
        "imagePullSecrets": [{"name": name} for name in pod.image_pull_secrets],
        "priorityClassName": pod.priority_class_name,
        "runtimeClassName": pod.runtime_class_name,
        "topologySpreadConstraints": thawed(pod.topology_spread_constraints),
    }
    result.update({key: value for key, value in optional.items() if value})
    result.update(
        {
            "securityContext": security,
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": serving.scratch_size}}],
        }
    )
    if serving.dependency_cache is not None:
        result["volumes"].append({"name": "dependency-cache", **thawed(serving.dependency_cache)})
    return result


def _env(spec: ModelDeploymentSpec, *, track: Track, version: ServedVersion) -> list[dict[str, Any]]:
    own = [
        {"name": "MODEL_URI", "value": version.uri},
        {"name": "MLFLOW_TRACKING_URI", "value": spec.registry.tracking_uri},
        {"name": "PORT", "value": str(spec.serving.port)},
        {"name": "SCRATCH_DIR", "value": SCRATCH_PATH},
        {"name": "ALIASROLL_TRACK", "value": track.value},
    ]
    if spec.serving.dependencies != "install":
        own.append({"name": "ALIASROLL_DEPENDENCIES", "value": spec.serving.dependencies})
    if spec.serving.dependency_cache is not None:
        own.append({"name": "ALIASROLL_DEPENDENCY_CACHE", "value": DEPENDENCY_CACHE_PATH})
    taken = {item["name"] for item in own}
    # The CRD and parse_spec refuse these names; dropping them here keeps the env a valid list-map
    # (unique names) whatever reaches the builder.
    return own + [thawed(item) for item in spec.serving.env if item.get("name") not in taken]


def pod_disruption_budget(*, owner: ResourceRef, track: Track, replicas: int) -> Manifest:
    """Limits voluntary evictions (node drains) of one track's pods, named like its Deployment: one
    pod at a time may go, whatever the track's size (`replicas` no longer changes the budget).

    A budget that allows no eviction (minAvailable 1 on a one-pod track, as with `replicas: 1`)
    means, in Kubernetes' words, that a drain of the node never completes: node upgrades wait for
    ever. For a single instance Kubernetes' guidance is to tolerate the downtime, which is what
    maxUnavailable 1 does on a one-pod track (as no budget would): the pod is evicted and the track
    is down until its replacement is ready. `replicas: 2` or more keeps a track serving through
    drains: one pod goes at a time, and the next only once the evicted pod's replacement is ready.
    Unhealthy pods may always be evicted: they serve nothing, and keeping them would block drains
    for no gain.
    """
    del replicas
    budget: dict[str, Any] = {
        "selector": {"matchLabels": track_selector(owner, track)},
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(
            owner, workload_name(owner, track), {**common_labels(owner), LABEL_TRACK: track.value}
        ),
        "spec": budget,
    }


def service(
    *, owner: ResourceRef, name: str, selector: dict[str, str], spec: ModelDeploymentSpec
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, name, common_labels(owner)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }
