"""Version mode's objects: a Deployment per version, gated, and its disruption budget.

planning/versions.py decides which versions run and how; this module writes each as the API server
takes it. A version's Deployment is the track model's (planning/workloads.py) with three changes: its
name and selector are the version's, its pods carry the readiness gate `aliasroll.io/routed`, and
nothing in the pod template names a role (a role changes without new pods; a template change would
roll them).
"""

from __future__ import annotations

import hashlib

from aliasroll.labels import (
    LABEL_GATED,
    LABEL_OWNER,
    LABEL_ROLE,
    LABEL_TRACK,
    LABEL_VERSION,
    READINESS_GATE,
)
from aliasroll.planning import workloads
from aliasroll.planning.fleet import Role, VersionId
from aliasroll.planning.state import ServedVersion
from aliasroll.planning.workloads import Manifest, WorkloadDefaults
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, Track

# A label value is at most 63 characters; a longer Deployment name is hashed into the selector.
MAX_LABEL_VALUE = 63
LABEL_WORKLOAD = "aliasroll.io/workload"


def deployment_name(owner: ResourceRef, spec: ModelDeploymentSpec, version: VersionId) -> str:
    """`<name>-v<version>`; a version of another registered model (the spec renamed it) gets a short
    hash of that model's name as well, so the two never share a name."""
    if version.model == spec.model.name:
        return f"{owner.name}-v{version.version}"
    digest = hashlib.sha256(version.model.encode()).hexdigest()[:8]
    return f"{owner.name}-{digest}-v{version.version}"


def selector(owner: ResourceRef, name: str) -> dict[str, str]:
    # A Deployment's selector never changes; one version's Deployment is one name.
    value = name if len(name) <= MAX_LABEL_VALUE else hashlib.sha256(name.encode()).hexdigest()[:40]
    return {LABEL_OWNER: owner.name, LABEL_WORKLOAD: value}


def deployment(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    name: str,
    version: ServedVersion,
    replicas: int,
    role: Role,
    defaults: WorkloadDefaults,
) -> Manifest:
    """One version's Deployment. Its role is a label of the Deployment only: the pods' template never
    changes with it (a change would roll them), and their gate says whether they take requests."""
    pinned = selector(owner, name)
    labels = {**workloads.common_labels(owner), LABEL_VERSION: version.version, LABEL_GATED: "true"}
    template = workloads.deployment(
        owner=owner, spec=spec, track=Track.PRODUCTION, version=version, replicas=replicas, defaults=defaults
    )
    pod = template["spec"]["template"]
    pod["metadata"]["labels"] = {
        **{k: v for k, v in pod["metadata"]["labels"].items() if k != LABEL_TRACK},
        **labels,
        **pinned,
    }
    container = workloads.serving_container(
        owner,
        spec,
        None,
        version,
        defaults,
        cache=workloads.uses_dependency_cache(spec, defaults.dependencies),
    )
    pod["spec"]["containers"] = [
        container if c.get("name") == container["name"] else c for c in pod["spec"]["containers"]
    ]
    pod["spec"]["readinessGates"] = [{"conditionType": READINESS_GATE}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": workloads.metadata(owner, name, {**labels, LABEL_ROLE: role.value}),
        "spec": {
            **template["spec"],
            "replicas": replicas,
            "selector": {"matchLabels": pinned},
            "template": pod,
        },
    }


def budget(owner: ResourceRef, name: str) -> Manifest:
    """One pod of a routed version may be evicted at a time; pods that are not Ready (a warm
    version's) always may, so a drain never waits on them."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": workloads.metadata(owner, name, {**workloads.common_labels(owner), LABEL_GATED: "true"}),
        "spec": {
            "selector": {"matchLabels": selector(owner, name)},
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
