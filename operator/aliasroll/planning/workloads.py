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
from aliasroll.spec import API_VERSION, KIND, ModelDeploymentSpec, ResourceRef, Track

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
# The serving image's contract (serving-image/README): readiness means loaded and warmed up.
READINESS_PATH = "/ready"
LIVENESS_PATH = "/live"


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
        "env": [
            {"name": "MODEL_URI", "value": version.uri},
            {"name": "MLFLOW_TRACKING_URI", "value": spec.registry.tracking_uri},
            {"name": "PORT", "value": str(spec.serving.port)},
            {"name": "SCRATCH_DIR", "value": SCRATCH_PATH},
            {"name": "ALIASROLL_TRACK", "value": track.value},
            *[dict(item) for item in spec.serving.env],
        ],
        "readinessProbe": _probe(READINESS_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVENESS_PATH, period=10, failures=3),
        # Downloading and loading a model can take minutes; liveness waits for it.
        "startupProbe": _probe(LIVENESS_PATH, period=5, failures=120),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
    }
    if spec.serving.resources:
        container["resources"] = dict(spec.serving.resources)
    if spec.registry.credentials_secret:
        # The Secret's keys are MLflow's own variable names (MLFLOW_TRACKING_USERNAME, ...).
        container["envFrom"] = [{"secretRef": {"name": spec.registry.credentials_secret}}]
    pod_spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    }
    if spec.serving.service_account_name:
        pod_spec["serviceAccountName"] = spec.serving.service_account_name
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
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
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
