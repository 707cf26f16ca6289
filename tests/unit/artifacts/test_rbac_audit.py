"""The RBAC audit's pure half (tests/support/rbac_audit.py) on audit events written by hand: what it
counts as used, what it calls missing, unused or outside a rule's resourceNames. The end-to-end tier
(tests/e2e/test_zz_rbac_audit.py) runs it on the API server's real audit log."""

from __future__ import annotations

import json
from typing import Any

from support import rbac_audit

USER = rbac_audit.OPERATOR_USER


def event(
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = "ml",
    name: str | None = None,
    code: int = 200,
    user: str = USER,
    agent: str = "kopf/1.45",
    subresource: str | None = None,
    decision: str | None = None,
) -> str:
    ref: dict[str, Any] = {"resource": resource, "apiGroup": group}
    if namespace:
        ref["namespace"] = namespace
    if name:
        ref["name"] = name
    if subresource:
        ref["subresource"] = subresource
    annotations = {"authorization.k8s.io/decision": decision} if decision else {}
    return json.dumps(
        {
            "annotations": annotations,
            "verb": verb,
            "user": {"username": user},
            "objectRef": ref,
            "responseStatus": {"code": code},
            "userAgent": agent,
        }
    )


RULES = [
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list", "watch", "patch", "create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "update"],
        "resourceNames": ["aliasroll"],
    },
]


def test_discovery_and_other_users_and_kubectl_are_left_out() -> None:
    requests = rbac_audit.parse(
        [
            json.dumps({"verb": "get", "user": {"username": USER}, "requestURI": "/apis"}),  # no objectRef
            event("list", "secrets", user="system:admin"),
            event("list", "secrets", agent="kubectl/v1.35.0"),
            event("watch", "secrets"),
            "",
        ]
    )
    assert [(r.user, r.verb) for r in rbac_audit.of(requests, USER)] == [(USER, "watch")]


def test_an_apply_that_created_its_object_counts_as_create_too() -> None:
    requests = rbac_audit.parse(
        [event("patch", "deployments", group="apps", code=201), event("patch", "deployments", group="apps")]
    )
    used = rbac_audit.used(requests)
    assert used[("apps", "deployments", "patch")] == 2
    assert used[("apps", "deployments", "create")] == 1


def test_unused_missing_refused_and_outside_names_are_each_reported() -> None:
    requests = rbac_audit.parse(
        [
            event("list", "deployments", group="apps"),
            event("watch", "deployments", group="apps"),
            event("patch", "deployments", group="apps", code=201),
            event("list", "secrets"),
            event("watch", "secrets"),
            event("get", "secrets", name="other", code=403),  # refused
            event("delete", "services"),  # not granted: a broader rule let it through
            event(
                "get", "leases", group="coordination.k8s.io", namespace="aliasroll-system", name="aliasroll"
            ),
            event("update", "leases", group="coordination.k8s.io", namespace="aliasroll-system", name="x"),
            event("patch", "modeldeployments", group="aliasroll.io", subresource="status", code=200),
        ]
    )
    grants = rbac_audit.granted(RULES)
    comparison = rbac_audit.compare(requests, grants, allowed_unused={})
    assert [(r.verb, r.resource) for r in comparison.refused] == [("get", "secrets")]
    assert comparison.missing == [
        ("", "services", "delete"),
        ("aliasroll.io", "modeldeployments/status", "patch"),
    ]
    assert comparison.outside_names == ["update leases aliasroll-system/x"]
    assert comparison.unused == []
    # A grant nothing used is reported, unless ALLOWED_UNUSED names it with its reason.
    grants[("apps", "deployments", "delete")] = None
    assert rbac_audit.compare(requests, grants, allowed_unused={}).unused == [
        ("apps", "deployments", "delete")
    ]
    excused = {("apps", "deployments", "delete"): "a path the tier cannot reach"}
    assert rbac_audit.compare(requests, grants, allowed_unused=excused).unused == []


def test_two_rules_for_one_grant_widen_its_names() -> None:
    rules = [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["a"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["b"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"], "resourceNames": ["c"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    grants = rbac_audit.granted(rules)
    assert grants[("", "configmaps", "get")] == frozenset({"a", "b"})
    assert grants[("", "events", "create")] is None


def test_the_shipped_installs_grant_what_the_operator_s_code_needs() -> None:
    # The installs as the tier compares them: leader election on the Lease, status patches, and
    # Secrets only listed and watched (never got by name).
    wide = rbac_audit.cluster_wide_install()
    assert ("coordination.k8s.io", "leases", "update") in wide
    assert ("aliasroll.io", "modeldeployments/status", "patch") in wide
    assert ("", "secrets", "get") not in wide
    # The readiness gate of spec.rollback: a patch of the pods' status, never of the pods.
    assert ("", "pods/status", "patch") in wide
    assert ("", "pods", "patch") not in wide
    namespaced = rbac_audit.namespaced_install()
    assert ("", "secrets", "watch") in namespaced
    assert ("", "secrets", "get") not in namespaced
    assert ("", "pods/status", "patch") in namespaced


def test_a_403_from_admission_after_rbac_allowed_is_not_a_refusal() -> None:
    # A ResourceQuota that allows no Services answers 403 too, after RBAC allowed the request.
    requests = rbac_audit.parse(
        [
            event("patch", "services", code=403, decision="allow"),
            event("delete", "services", code=403, decision="forbid"),
        ]
    )
    comparison = rbac_audit.compare(requests, rbac_audit.granted([]), allowed_unused={})
    assert [(r.verb, r.resource) for r in comparison.refused] == [("delete", "services")]
    assert comparison.missing == [("", "services", "patch")], "the allowed one was used"
