"""What the operator's ServiceAccounts did, from the API server's audit log, against what their roles grant.

The local control plane logs every request of the operator's namespace's ServiceAccounts at the
Metadata level (localenv/localkube/apiserver.py): who, verb, resource and subresource, namespace, name,
response code. Comparing the (apiGroup, resource, verb) they used with the (apiGroup, resource, verb)
manifests/rbac.yaml grants proves the grants minimal as well as sufficient: a granted verb nothing
used is a grant to drop (or to name in ALLOWED_UNUSED with the reason the tier cannot show it), and a
used verb the roles lack is a 403 in the log (or a request the roles only allow through a broader rule).

tests/e2e/test_zz_rbac_audit.py runs the comparison at the end of the end-to-end tier; the functions
here are pure, so tests/unit/artifacts/test_rbac_audit.py checks them on events written by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OPERATOR_NAMESPACE = "aliasroll-system"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:aliasroll"

Grant = tuple[str, str, str]  # (apiGroup, resource or resource/subresource, verb)

# Grants a code path needs that no audit event can show, or that the end-to-end tier does not reach;
# each says why. Everything else manifests/rbac.yaml grants must be used by the tier.
ALLOWED_UNUSED: Mapping[Grant, str] = {
    # The operator never writes a ModelDeployment's finalizers; the grant is what setting
    # blockOwnerDeletion on its objects' ownerReferences takes where the admission plugin
    # OwnerReferencesPermissionEnforcement runs (OpenShift; the local control plane enables it, so every
    # apply of the tier proves it). An admission check is no request: the audit log never shows it.
    ("aliasroll.io", "modeldeployments/finalizers", "update"): "admission check, never a request",
    # After a status patch the API server refuses (422), the applier reads the resource by name to
    # tell an object replaced under the same name from a status it cannot take
    # (tests/unit/controller/test_reconciler_gone.py); no status of the tier is refused.
    ("aliasroll.io", "modeldeployments", "get"): "only after a refused status patch",
    # Prune deletes an HTTPRoute when its resource leaves the gatewayAPI router (tests/unit/planning/test_
    # routers.py); the tier switches routers only towards gatewayAPI.
    ("gateway.networking.k8s.io", "httproutes", "delete"): "only when a resource leaves gatewayAPI",
}


@dataclass(frozen=True)
class Request:
    """One resource request of the audit log (non-resource requests, /api and /apis discovery, are
    left out: RBAC grants them to every authenticated user through system:discovery)."""

    user: str
    verb: str
    group: str
    resource: str  # "resource" or "resource/subresource"
    namespace: str | None
    name: str | None
    code: int
    user_agent: str
    # The authorizer's decision ("allow" or "forbid", from the event's annotations): a 403 may also
    # come from admission after RBAC allowed it (a ResourceQuota that allows no Services).
    decision: str = ""

    @property
    def denied(self) -> bool:
        """Refused by authorization (RBAC), not by admission."""
        return self.decision == "forbid" or (not self.decision and self.code == 403)

    @property
    def grant(self) -> Grant:
        return (self.group, self.resource, self.verb)

    @property
    def by_kubectl(self) -> bool:
        """Made by a test with the account's token (kubectl auth can-i), not by the operator."""
        return self.user_agent.startswith("kubectl/")


def parse(lines: Iterable[str]) -> list[Request]:
    """The resource requests of audit events (JSON lines), one per event: a watch has two (when its
    response starts and when it ends), every other request one."""
    found = []
    for line in lines:
        if not line.strip():
            continue
        event: dict[str, Any] = json.loads(line)
        ref = event.get("objectRef")
        if not ref or "resource" not in ref:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.append(
            Request(
                user=event["user"]["username"],
                verb=event["verb"],
                group=ref.get("apiGroup", ""),
                resource=resource,
                namespace=ref.get("namespace"),
                name=ref.get("name"),
                code=int((event.get("responseStatus") or {}).get("code") or 0),
                user_agent=event.get("userAgent", ""),
                decision=str((event.get("annotations") or {}).get("authorization.k8s.io/decision") or ""),
            )
        )
    return found


def read(paths: Iterable[Path]) -> list[Request]:
    requests: list[Request] = []
    for path in paths:
        with path.open() as log:
            requests += parse(log)
    return requests


def of(requests: Iterable[Request], user: str) -> list[Request]:
    """The operator's own requests as `user`: those a test made with its token (kubectl) left out."""
    return [request for request in requests if request.user == user and not request.by_kubectl]


def forbidden(requests: Iterable[Request]) -> list[Request]:
    return [request for request in requests if request.denied]


def used(requests: Iterable[Request]) -> Counter[Grant]:
    """How often each (apiGroup, resource, verb) was allowed. A server-side apply that created its
    object (PATCH answered 201) was authorized as `create` too: the API server checks it for an apply
    of an object that does not exist yet, inside the one request the log shows as `patch`."""
    counts: Counter[Grant] = Counter()
    for request in requests:
        if request.denied:
            continue
        counts[request.grant] += 1
        if request.verb == "patch" and request.code == 201:
            counts[(request.group, request.resource, "create")] += 1
    return counts


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def granted(rules: Iterable[Mapping[str, Any]]) -> dict[Grant, frozenset[str] | None]:
    """Every (apiGroup, resource, verb) a list of PolicyRules allows, with the object names it is
    limited to (None: any name)."""
    names: dict[Grant, frozenset[str] | None] = {}
    for rule in rules:
        limited = frozenset(rule["resourceNames"]) if rule.get("resourceNames") else None
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    key = (group, resource, verb)
                    if key not in names:
                        names[key] = limited
                        continue
                    before = names[key]
                    # Another rule grants it too: any name if either does, else the names of both.
                    names[key] = None if before is None or limited is None else before | limited
    return names


def rules_of(docs: Iterable[Mapping[str, Any]], *kinds: str) -> list[Mapping[str, Any]]:
    return [rule for doc in docs if doc["kind"] in kinds for rule in doc.get("rules") or ()]


def cluster_wide_install() -> dict[Grant, frozenset[str] | None]:
    """What manifests/rbac.yaml grants the operator's ServiceAccount: the ClusterRole and the leader
    election Role."""
    return granted(rules_of(documents(MANIFESTS / "rbac.yaml"), "ClusterRole", "Role"))


def namespaced_install() -> dict[Grant, frozenset[str] | None]:
    """What the namespaced install grants: its ClusterRole (Kopf's cluster-wide reads), the Role of a
    watched namespace and the leader election Role."""
    return granted(
        rules_of(documents(MANIFESTS / "namespaced" / "cluster-role.yaml"), "ClusterRole")
        + rules_of(documents(MANIFESTS / "namespaced" / "watched-namespace" / "role.yaml"), "Role")
        + rules_of(documents(MANIFESTS / "rbac.yaml"), "Role")
    )


@dataclass(frozen=True)
class Comparison:
    used: Counter[Grant]
    missing: list[Grant]  # used, but granted by none of the rules
    outside_names: list[str]  # used on an object the rule's resourceNames leave out
    refused: list[Request]  # answered 403
    unused: list[Grant]  # granted, never used, not in ALLOWED_UNUSED

    def report(self) -> str:
        """One line per grant used: how often, apiGroup (core for ""), resource, verb."""
        return "\n".join(
            f"{count:7d}  {group or 'core'} {resource} {verb}"
            for (group, resource, verb), count in sorted(self.used.items())
        )


def compare(
    requests: Iterable[Request],
    grants: Mapping[Grant, frozenset[str] | None],
    *,
    allowed_unused: Mapping[Grant, str] = ALLOWED_UNUSED,
) -> Comparison:
    requests = list(requests)
    counts = used(requests)
    outside = sorted(
        {
            f"{request.verb} {request.resource} {request.namespace}/{request.name}"
            for request in requests
            if not request.denied
            and (limit := grants.get(request.grant)) is not None
            and request.name not in limit
        }
    )
    return Comparison(
        used=counts,
        missing=sorted(set(counts) - set(grants)),
        outside_names=outside,
        refused=forbidden(requests),
        unused=sorted(set(grants) - set(counts) - set(allowed_unused)),
    )
