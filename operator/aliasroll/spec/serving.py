"""spec.serving of a ModelDeployment: the serving pods' image, ports, env, resources, dependencies
and pod template, checked as the CRD checks them (a resource may predate the installed CRD)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aliasroll.errors import InvalidSpec
from aliasroll.spec.fields import frozen, integer, json_list, json_object, string_map
from aliasroll.spec.types import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_PORT,
    DEFAULT_SCRATCH_SIZE,
    DEPENDENCY_MODES,
    LEGACY_DEPENDENCY_CACHE_SOURCES,
    OPERATOR_ENV,
    OPERATOR_LABELS,
    OPERATOR_PREFIX,
    PodSecurity,
    PodSettings,
    ServingSpec,
)

_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_MAX_ID = 2**31 - 1


def parse_serving(raw: object) -> ServingSpec:
    """spec.serving, checked as the CRD checks it (a resource may predate the installed CRD)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.serving", "must be an object")
    env = _env(raw.get("env"))
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidSpec("spec.serving.resources", "must be an object")
    scratch_size = str(raw.get("scratchSize", DEFAULT_SCRATCH_SIZE))
    if not _QUANTITY.match(scratch_size):
        raise InvalidSpec("spec.serving.scratchSize", f"{scratch_size!r} is not a quantity such as 10Gi")
    secret_ref = raw.get("credentialsSecretRef")
    dependencies = _dependencies(raw.get("dependencies", "install"))
    dependency_cache = _dependency_cache(raw.get("dependencyCache"))
    port, admin_port = _ports(raw)
    return ServingSpec(
        image=raw.get("image") or None,
        port=port,
        admin_port=admin_port,
        resources=frozen(resources),
        env=tuple(frozen(item) for item in env),
        service_account_name=raw.get("serviceAccountName") or None,
        credentials_secret=(secret_ref.get("name") or None) if isinstance(secret_ref, Mapping) else None,
        scratch_size=scratch_size,
        pod=_pod_settings(raw.get("podTemplate")),
        dependencies=dependencies,
        dependency_cache=dependency_cache,
    )


def _env(raw: object) -> list[Any]:
    """spec.serving.env: every item named, once, and none of the names the operator sets."""
    env = json_list(raw, path="spec.serving.env")
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
    return env


def _dependencies(dependencies: object) -> str:
    if dependencies not in DEPENDENCY_MODES:
        raise InvalidSpec(
            "spec.serving.dependencies",
            f"{dependencies!r}: use install (the pods install what the version logged beyond the image) "
            "or image (the image has every requirement)",
        )
    return str(dependencies)


def _dependency_cache(raw: object) -> bool:
    """spec.serving.dependencyCache: on or off (a legacy source, from before the cache was the
    operator's, reads as on)."""
    cache = json_object(raw, path="spec.serving.dependencyCache")
    enabled = cache.get("enabled", True) if raw is not None else False
    if not isinstance(enabled, bool):
        raise InvalidSpec("spec.serving.dependencyCache.enabled", f"must be true or false, got {enabled!r}")
    unknown = sorted(set(cache) - {"enabled", *LEGACY_DEPENDENCY_CACHE_SOURCES})
    if unknown:
        raise InvalidSpec(
            "spec.serving.dependencyCache",
            f"takes only enabled (the operator's settings say where the cache is), not {', '.join(unknown)}",
        )
    return enabled


def _ports(raw: Mapping[str, Any]) -> tuple[int, int]:
    """The serving port and the admin port, never the same."""
    port = integer(raw.get("port", DEFAULT_PORT), path="spec.serving.port", low=1, high=65535)
    admin_port = integer(
        raw.get("adminPort", DEFAULT_ADMIN_PORT), path="spec.serving.adminPort", low=1, high=65535
    )
    if admin_port == port:
        raise InvalidSpec(
            "spec.serving.adminPort",
            f"{admin_port} is spec.serving.port too: the admin endpoints (/metrics, /ready, ...) have a "
            "port of their own, which Services do not route to",
        )
    return port, admin_port


def _pod_settings(raw: object) -> PodSettings:
    path = "spec.serving.podTemplate"
    if raw is None:
        return PodSettings()
    if not isinstance(raw, Mapping):
        raise InvalidSpec(path, "must be an object")
    meta = json_object(raw.get("metadata"), path=f"{path}.metadata")
    pod = json_object(raw.get("spec"), path=f"{path}.spec")
    labels = string_map(meta.get("labels"), path=f"{path}.metadata.labels")
    for key in labels:
        if key in OPERATOR_LABELS or key.startswith(OPERATOR_PREFIX):
            raise InvalidSpec(
                f"{path}.metadata.labels", f"cannot set {key}: the operator selects its pods by it"
            )
    annotations = string_map(meta.get("annotations"), path=f"{path}.metadata.annotations")
    for key in annotations:
        if key.startswith(OPERATOR_PREFIX):
            raise InvalidSpec(f"{path}.metadata.annotations", f"cannot set {key}: the operator sets it")
    security = json_object(pod.get("securityContext"), path=f"{path}.spec.securityContext")
    secrets = json_list(pod.get("imagePullSecrets"), path=f"{path}.spec.imagePullSecrets")
    affinity = pod.get("affinity")
    return PodSettings(
        labels=MappingProxyType(dict(labels)),
        annotations=MappingProxyType(dict(annotations)),
        node_selector=MappingProxyType(
            dict(string_map(pod.get("nodeSelector"), path=f"{path}.spec.nodeSelector"))
        ),
        tolerations=tuple(
            frozen(item) for item in json_list(pod.get("tolerations"), path=f"{path}.spec.tolerations")
        ),
        affinity=frozen(json_object(affinity, path=f"{path}.spec.affinity")) if affinity else None,
        image_pull_secrets=tuple(
            str(item["name"]) for item in secrets if isinstance(item, Mapping) and item.get("name")
        ),
        priority_class_name=pod.get("priorityClassName") or None,
        runtime_class_name=pod.get("runtimeClassName") or None,
        topology_spread_constraints=tuple(
            frozen(item)
            for item in json_list(
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
                for group in json_list(
                    security.get("supplementalGroups"), path=f"{path}.spec.securityContext.supplementalGroups"
                )
            ),
        ),
    )


def _id(value: object, *, path: str, low: int) -> int | None:
    if value is None:
        return None
    return _group(value, path=path) if low == 1 else integer(value, path=path, low=low, high=_MAX_ID)


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
    return integer(value, path=path, low=1, high=_MAX_ID)
