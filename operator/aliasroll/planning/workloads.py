"""Manifests of the objects every router needs: one Deployment per track, and Services.

Names: `<name>-production` and `<name>-canary` for the Deployments (and for the per-track Services
of routers that need them), `<name>` for the Service clients call. The version is pinned in the pod
template (env, labels, annotations), so an alias move is a rolling update Kubernetes understands and
`kubectl rollout status deployment/<name>-production` follows it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aliasroll import reasons
from aliasroll.conditions import FALSE, TRUE, Condition
from aliasroll.labels import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_RUN_ID,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    LABEL_TRACK,
    LABEL_VERSION,
    MANAGER,
)
from aliasroll.planning.state import ServedVersion
from aliasroll.spec import API_VERSION, KIND, ModelDeploymentSpec, ResourceRef, ServingSpec, Track, thawed

Manifest = dict[str, Any]

CONTAINER_NAME = "model-server"
SERVICE_PORT = 80
# The serving container's two ports: "http" (spec.serving.port), the only one the Services route to,
# and "admin" (spec.serving.adminPort): /ready and /live for the kubelet's probes, /metrics for
# Prometheus and the operator's canary analysis, /version. Clients never reach the admin port
# through a Service or a route.
HTTP_PORT_NAME = "http"
ADMIN_PORT_NAME = "admin"
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


DEFAULT_DEPENDENCY_CACHE_SIZE = "20Gi"
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


@dataclass(frozen=True)
class DependencySettings:
    """The operator's settings for what the serving pods install (README "Model dependencies"): where
    the dependency cache is, how big it may grow, and what the pods may install beyond requirements
    from the index. Tenants only turn the cache on or off (spec.serving.dependencyCache)."""

    # A directory on every node; the pods of a namespace get its subdirectory <namespace> (subPath).
    cache_host_path: str | None = None
    # Or a PersistentVolumeClaim of this name in each namespace whose pods use the cache.
    cache_claim: str | None = None
    cache_max_bytes: int = 20 * 2**30
    direct_references: bool = False  # name @ URL, VCS links, paths in requirement files
    source_builds: bool = False  # sdists built at install (their build code runs in the pod)

    @property
    def cache(self) -> bool:
        return bool(self.cache_host_path or self.cache_claim)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DependencySettings:
        """ALIASROLL_DEPENDENCY_*; a bad value stops the operator with a message naming it."""
        host_path = (env.get("ALIASROLL_DEPENDENCY_CACHE_HOST_PATH") or "").strip() or None
        claim = (env.get("ALIASROLL_DEPENDENCY_CACHE_CLAIM") or "").strip() or None
        if host_path and claim:
            raise SystemExit(
                "set ALIASROLL_DEPENDENCY_CACHE_HOST_PATH or ALIASROLL_DEPENDENCY_CACHE_CLAIM, not both"
            )
        if host_path is not None:
            pure = PurePosixPath(host_path)
            if not pure.is_absolute() or ".." in pure.parts or pure == PurePosixPath("/"):
                raise SystemExit(
                    f"ALIASROLL_DEPENDENCY_CACHE_HOST_PATH={host_path!r} must be an absolute directory "
                    "(not /) without '..'"
                )
            host_path = str(pure)
        if claim is not None and not _CLAIM_NAME.match(claim):
            raise SystemExit(
                f"ALIASROLL_DEPENDENCY_CACHE_CLAIM={claim!r} is not a PersistentVolumeClaim name"
            )
        size = (env.get("ALIASROLL_DEPENDENCY_CACHE_SIZE") or DEFAULT_DEPENDENCY_CACHE_SIZE).strip()
        quantity = _QUANTITY.match(size)
        if quantity is None or int(quantity[1]) == 0:
            raise SystemExit(f"ALIASROLL_DEPENDENCY_CACHE_SIZE={size!r} is not a size such as 20Gi")
        return cls(
            cache_host_path=host_path,
            cache_claim=claim,
            cache_max_bytes=int(quantity[1]) * _UNITS[quantity[2] or ""],
            direct_references=_flag(env, "ALIASROLL_DEPENDENCY_DIRECT_REFERENCES"),
            source_builds=_flag(env, "ALIASROLL_DEPENDENCY_SOURCE_BUILDS"),
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "false", "0", "no", "off"):
        return False
    if raw in ("true", "1", "yes", "on"):
        return True
    raise SystemExit(f"{name}={env.get(name)!r} is not true or false")


@dataclass(frozen=True)
class WorkloadDefaults:
    """Operator-wide settings that shape workloads."""

    image: str = "ghcr.io/aliasroll/serving:0.1.0"
    progress_deadline_seconds: int = 600
    dependencies: DependencySettings = field(default_factory=DependencySettings)


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
    cache = uses_dependency_cache(spec, defaults.dependencies)
    container = serving_container(owner, spec, track, version, defaults, cache=cache)
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
                "spec": pod_spec(spec.serving, container, cache=defaults.dependencies if cache else None),
            },
        },
    }


def serving_container(
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    track: Track | None,
    version: ServedVersion,
    defaults: WorkloadDefaults,
    *,
    cache: bool,
) -> dict[str, Any]:
    """The serving container: the pod contract (ports, probes, drain), hardened, with the version's
    settings in its environment (and its track's name, None in version mode: a pod there serves
    whichever role its version has, which changes without new pods)."""
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.serving.image or defaults.image,
        "ports": [
            {"name": HTTP_PORT_NAME, "containerPort": spec.serving.port, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": spec.serving.admin_port, "protocol": "TCP"},
        ],
        "env": _env(spec, track=track, version=version, dependencies=defaults.dependencies),
        "readinessProbe": _probe(READINESS_PATH, period=5, failures=3),
        "livenessProbe": _probe(LIVENESS_PATH, period=10, failures=3),
        # Downloading and loading a model can take minutes; liveness waits for it.
        "startupProbe": _probe(LIVENESS_PATH, period=5, failures=120),
        # The sleep action needs no binary in the image.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "securityContext": hardened_container(),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        # Why a version cannot start (a requirement the index lacks, ...) reaches the pod's status,
        # where the operator reads it for the RolloutStalled condition (kube/observe.py). The
        # server writes it, redacted; the kubelet never puts the log (what the model printed) there.
        "terminationMessagePolicy": "File",
    }
    if cache:
        container["volumeMounts"].append(_cache_mount(owner, defaults.dependencies))
    if spec.serving.resources:
        container["resources"] = thawed(spec.serving.resources)
    if secret := pod_credentials_secret(spec):
        # The Secret's keys are MLflow's own variable names (MLFLOW_TRACKING_USERNAME, ...).
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return container


def hardened_container() -> dict[str, Any]:
    """The container securityContext of every pod the operator makes (serving, the holdout gate)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_credentials_secret(spec: ModelDeploymentSpec) -> str | None:
    """The Secret pods get MLflow credentials from: spec.serving.credentialsSecretRef, or none.

    Never the operator's spec.registry.credentialsSecretRef by default: the operator writes to the
    registry (version tags, a canary's alias moves), so its credentials can, and a pod runs the
    model's code and the packages it installs. Naming that same Secret in
    spec.serving.credentialsSecretRef is the explicit opt-in (the PodCredentials condition says so)."""
    return spec.serving.credentials_secret


def pod_credentials_condition(spec: ModelDeploymentSpec) -> Condition | None:
    """PodCredentials: which registry credentials the serving pods hold, when the resource names any
    Secret. False when pods that likely need credentials (the operator needs them for this
    registry) get none, or when they get the operator's own, which may write."""
    operator, pods = spec.registry.credentials_secret, spec.serving.credentials_secret
    if operator is None and pods is None:
        return None
    if pods is None:
        return Condition(
            reasons.POD_CREDENTIALS,
            FALSE,
            reasons.POD_CREDENTIALS_NOT_SET,
            f"the serving pods get no registry credentials: spec.serving.credentialsSecretRef is not set, "
            f"and the operator's Secret {operator!r} (spec.registry.credentialsSecretRef) is not given to "
            "pods, since it may write to the registry. If the pods need credentials to download the "
            "model, set spec.serving.credentialsSecretRef to a read-only Secret (or to "
            f"{operator!r} itself, to give them the operator's access knowingly)",
        )
    if pods == operator:
        return Condition(
            reasons.POD_CREDENTIALS,
            FALSE,
            reasons.OPERATOR_CREDENTIALS_SHARED,
            f"the serving pods get the operator's own Secret {pods!r}, as spec.serving.credentialsSecretRef "
            "asks: the model's code and the packages it installs can do in the registry whatever the "
            "operator may (move aliases, and so the ModelDeployments that follow them); give the pods "
            "a read-only Secret instead",
        )
    return Condition(
        reasons.POD_CREDENTIALS,
        TRUE,
        reasons.POD_CREDENTIALS_SET,
        f"the serving pods get Secret {pods!r} (spec.serving.credentialsSecretRef), not the operator's",
    )


def uses_dependency_cache(spec: ModelDeploymentSpec, settings: DependencySettings) -> bool:
    """The pods mount the operator's dependency cache: the resource asks for it, the operator has
    one, and the pods install anything at all."""
    return spec.serving.dependency_cache and settings.cache and spec.serving.dependencies == "install"


def _cache_mount(owner: ResourceRef, settings: DependencySettings) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH}
    if settings.cache_host_path:
        # Only this namespace's directory is in the pod: another namespace's sets are out of reach.
        mount["subPath"] = owner.namespace
    return mount


def _cache_volume(settings: DependencySettings) -> dict[str, Any]:
    if settings.cache_host_path:
        # Directory: the operator's directory must exist (never created by the kubelet, as root).
        return {
            "name": "dependency-cache",
            "hostPath": {"path": settings.cache_host_path, "type": "Directory"},
        }
    return {"name": "dependency-cache", "persistentVolumeClaim": {"claimName": settings.cache_claim}}


def pod_spec(
    serving: ServingSpec, container: dict[str, Any], *, cache: DependencySettings | None = None
) -> dict[str, Any]:
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
    if cache is not None:
        result["volumes"].append(_cache_volume(cache))
    return result


def _env(
    spec: ModelDeploymentSpec,
    *,
    track: Track | None,
    version: ServedVersion,
    dependencies: DependencySettings,
) -> list[dict[str, Any]]:
    own = [
        {"name": "MODEL_URI", "value": version.uri},
        {"name": "MLFLOW_TRACKING_URI", "value": spec.registry.tracking_uri},
        {"name": "PORT", "value": str(spec.serving.port)},
        {"name": "ADMIN_PORT", "value": str(spec.serving.admin_port)},
        {"name": "SCRATCH_DIR", "value": SCRATCH_PATH},
    ]
    if track is not None:
        own.append({"name": "ALIASROLL_TRACK", "value": track.value})
    if spec.serving.dependencies != "install":
        own.append({"name": "ALIASROLL_DEPENDENCIES", "value": spec.serving.dependencies})
    if uses_dependency_cache(spec, dependencies):
        own.append({"name": "ALIASROLL_DEPENDENCY_CACHE", "value": DEPENDENCY_CACHE_PATH})
        own.append(
            {"name": "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES", "value": str(dependencies.cache_max_bytes)}
        )
    if spec.serving.dependencies == "install":
        if dependencies.direct_references:
            own.append({"name": "ALIASROLL_DIRECT_REFERENCES", "value": "on"})
        if dependencies.source_builds:
            own.append({"name": "ALIASROLL_SOURCE_BUILDS", "value": "on"})
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
            # Only the serving port: the admin port (probes, /metrics) is never a Service's.
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ADMIN_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }
