"""Operator-level allow-lists: what a ModelDeployment may cause beyond its own namespace's pods.

Whoever may create a ModelDeployment may run pods in its namespace (docs/operations/security.md). Some of
what the operator writes for it reaches further, and a cluster admin who withholds those rights from
the namespace's users would otherwise grant them through the operator: a RuntimeClass picks the node's
container runtime (a less isolated one, say), a PriorityClass lets the pods preempt other tenants',
and an HTTPRoute attached to a shared Gateway claims hostnames on it for everyone who calls it.
The operator's settings (OperatorConfig.allowed, from ALIASROLL_ALLOWED_*) say which of those it may
write; a spec that asks for anything else is refused before anything is applied (reason NotAllowed,
the message names the setting), so what serves keeps serving until the spec or the setting changes.

The safe choice is the default: no RuntimeClass and no PriorityClass unless listed; parentRefs only in
the resource's own namespace unless listed; hostnames unrestricted unless listed (a route can then only
claim them on a Gateway of its own namespace, or of one the admin listed).

Every entry is a shell-style pattern (`*` matches anything, `kata-*`, `gateways/*`), and `{namespace}`
in it stands for the ModelDeployment's namespace (`*.{namespace}.apps.example.com`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from aliasroll.errors import NotAllowed
from aliasroll.spec import ModelDeploymentSpec, ParentRef, RouterKind

RUNTIME_CLASSES = "ALIASROLL_ALLOWED_RUNTIME_CLASSES"
PRIORITY_CLASSES = "ALIASROLL_ALLOWED_PRIORITY_CLASSES"
GATEWAYS = "ALIASROLL_ALLOWED_GATEWAYS"
HOSTNAMES = "ALIASROLL_ALLOWED_HOSTNAMES"

GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True)
class AllowLists:
    """Patterns of what ModelDeployments may ask for (module docstring); the defaults are the safe ones."""

    runtime_classes: tuple[str, ...] = ()  # none
    priority_classes: tuple[str, ...] = ()  # none
    # parentRefs outside the resource's own namespace, as namespace/name; those inside are always allowed.
    gateways: tuple[str, ...] = ()
    hostnames: tuple[str, ...] | None = None  # None: any hostname


def parse_list(name: str, raw: str | None) -> tuple[str, ...] | None:
    """A setting's entries, separated by commas or whitespace; None when unset or empty."""
    entries = tuple(entry for entry in (raw or "").replace(",", " ").split() if entry)
    if not entries:
        return None
    if name == GATEWAYS:
        for entry in entries:
            namespace, slash, gateway = entry.partition("/")
            if entry != "*" and (not slash or not namespace or not gateway or "/" in gateway):
                raise ValueError(
                    f"{name}: {entry!r} is not namespace/name (patterns allowed: gateways/*, or *)"
                )
    return entries


def check(spec: ModelDeploymentSpec, *, namespace: str, allowed: AllowLists) -> None:
    """Raises NotAllowed for the first thing `spec` asks for that `allowed` does not allow."""
    pod = spec.serving.pod
    path = "spec.serving.podTemplate.spec"
    if pod.runtime_class_name is not None:
        _one_of(
            pod.runtime_class_name,
            allowed.runtime_classes,
            namespace=namespace,
            field_path=f"{path}.runtimeClassName",
            setting=RUNTIME_CLASSES,
            what="RuntimeClass",
        )
    if pod.priority_class_name is not None:
        _one_of(
            pod.priority_class_name,
            allowed.priority_classes,
            namespace=namespace,
            field_path=f"{path}.priorityClassName",
            setting=PRIORITY_CLASSES,
            what="PriorityClass",
        )
    if spec.traffic.router is not RouterKind.GATEWAY_API:
        return  # the CRD allows gatewayAPI settings only with that router; nothing else writes routes
    gateway = spec.traffic
    path = "spec.traffic.gatewayAPI"
    for index, ref in enumerate(gateway.parent_refs):
        ref_namespace = ref.namespace or namespace
        if ref_namespace == namespace:
            continue
        if not _matches(f"{ref_namespace}/{ref.name}", allowed.gateways, namespace):
            allows = _listing(
                allowed.gateways, none="allows none (only parents in the resource's own namespace)"
            )
            raise NotAllowed(
                f"{path}.parentRefs[{index}]",
                f"{_kind(ref)} {ref_namespace}/{ref.name} is in another namespace and not allowed: the "
                f"operator's {GATEWAYS} {allows}; ask the cluster admin to add it, or attach the route to a "
                "parent in this namespace",
            )
    if allowed.hostnames is None:
        return
    for index, hostname in enumerate(gateway.hostnames):
        if not _matches(hostname, allowed.hostnames, namespace, lower=True):
            raise NotAllowed(
                f"{path}.hostnames[{index}]",
                f"{hostname!r} is not allowed by the operator's {HOSTNAMES} "
                f"({_listing(allowed.hostnames, none='allows none')}, for namespace {namespace}); "
                "ask the cluster admin, or use a hostname it allows",
            )
    foreign = [ref for ref in gateway.parent_refs if (ref.namespace or namespace) != namespace]
    if foreign and not gateway.hostnames:
        raise NotAllowed(
            f"{path}.hostnames",
            f"is needed on a parent in another namespace ({foreign[0].namespace}/{foreign[0].name}) "
            "while the "
            f"operator's {HOSTNAMES} is set: a route without hostnames takes every hostname its listener "
            "serves; name hostnames the setting allows",
        )


def _one_of(
    value: str, patterns: Sequence[str], *, namespace: str, field_path: str, setting: str, what: str
) -> None:
    if not _matches(value, patterns, namespace):
        raise NotAllowed(
            field_path,
            f"{what} {value!r} is not allowed: the operator's {setting} "
            f"{_listing(patterns, none='allows none')}; ask the cluster admin to allow it, or leave it out",
        )


def _matches(value: str, patterns: Sequence[str], namespace: str, *, lower: bool = False) -> bool:
    def norm(text: str) -> str:
        return text.lower() if lower else text  # hostnames: DNS names are case-insensitive

    return any(
        fnmatchcase(norm(value), norm(pattern.replace("{namespace}", namespace))) for pattern in patterns
    )


def _listing(patterns: Sequence[str], *, none: str) -> str:
    return f"allows {', '.join(patterns)}" if patterns else none


def _kind(ref: ParentRef) -> str:
    if (ref.group or GATEWAY_GROUP) == GATEWAY_GROUP and (ref.kind or "Gateway") == "Gateway":
        return "Gateway"
    return f"{ref.kind or 'Gateway'}{f'.{ref.group}' if ref.group else ''}"
