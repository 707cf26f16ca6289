"""Least privilege, proven: at the end of the tier, what the operator's ServiceAccounts did (the API
server's audit log) against what the manifests grant them.

This module runs last in the session: pytest takes the tier's files in name order and `zz` sorts after
every other, so the comparison sees the traffic of every test before it, while the session's cluster
still runs. That traffic is the operator's alone: the session's operator (every namespace) and those
test_leader_election.py and test_canary_adversity.py start (`--namespace`, leader election) use a token
of the install's ServiceAccount `aliasroll`; test_install.py runs the namespaced install with its own.
The local control plane logs their requests as metadata (localenv/localkube/apiserver.py), nobody
else's; requests a test made with such a token (`kubectl auth can-i`) are left out.

- Any request the API server refused them (403) fails the first test, and so does any (apiGroup,
  resource, verb) they used that their roles do not grant, or used on an object a rule's resourceNames
  leave out.
- A verb manifests/rbac.yaml grants that nothing used fails the second, unless ALLOWED_UNUSED
  (tests/support/rbac_audit.py) names it with the reason the tier cannot show it. Only a session that
  ran the whole tier without a failure can say a grant is unused: in any other (a few files, `-k`, a
  test that failed part-way) this half is skipped, saying why.

Each account's grants as used, with counts, go to .work/<run>-rbac-audit.txt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import OPERATOR_NAMESPACE, REPO, RUN

from localcluster import LocalCluster
from support import rbac_audit

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
# The namespaced install's ServiceAccount as test_install.py names it (its PREFIX, then `aliasroll`).
NAMESPACED_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:e2e-scoped-aliasroll"
REPORT = REPO / ".work" / f"{RUN}-rbac-audit.txt"


def partial_session(session: pytest.Session) -> str | None:
    """Why this session cannot show that a grant is unused (None: it ran the whole tier, all passed)."""
    config = session.config
    if any("::" in str(arg) for arg in config.args):
        return "this session runs chosen tests, not whole files"
    ran = {Path(str(item.path)).name for item in session.items}
    missing = sorted({path.name for path in HERE.glob("test_*.py")} - ran)
    if missing:
        return f"this session does not run {', '.join(missing)}"
    for option, flag in (
        ("keyword", "-k"),
        ("markexpr", "-m"),
        ("deselect", "--deselect"),
        ("lf", "--lf"),
        ("stepwise", "--sw"),
    ):
        if config.getoption(option, default=None):
            return f"{flag} narrows this session"
    if session.testsfailed:
        return f"{session.testsfailed} test(s) failed before this one: their paths may have ended early"
    return None


def requests(cluster: LocalCluster) -> list[rbac_audit.Request]:
    logs = cluster.audit_logs()
    assert logs, f"no audit log in {cluster.logs_dir}: is the API server's audit log on?"
    return rbac_audit.read(logs)


def comparisons(cluster: LocalCluster) -> dict[str, rbac_audit.Comparison]:
    everything = requests(cluster)
    found = {
        rbac_audit.OPERATOR_USER: rbac_audit.compare(
            rbac_audit.of(everything, rbac_audit.OPERATOR_USER), rbac_audit.cluster_wide_install()
        ),
        NAMESPACED_USER: rbac_audit.compare(
            rbac_audit.of(everything, NAMESPACED_USER), rbac_audit.namespaced_install(), allowed_unused={}
        ),
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        "".join(
            f"== {user}: grants used (count, apiGroup, resource, verb)\n{comparison.report()}\n"
            f"== {user}: granted, not used: {comparison.unused}\n\n"
            for user, comparison in found.items()
        )
    )
    return found


def test_the_operator_used_nothing_its_roles_do_not_grant(cluster: LocalCluster) -> None:
    found = comparisons(cluster)
    operator = found[rbac_audit.OPERATOR_USER]
    assert operator.used, "the operator's ServiceAccount made no request this session"
    for user, comparison in found.items():
        refused = sorted(
            {f"{r.verb} {r.resource} in {r.namespace or '(cluster)'}" for r in comparison.refused}
        )
        assert not refused, f"{user} was refused (403): {refused}"
        assert not comparison.missing, (
            f"{user} used (apiGroup, resource, verb) its roles do not grant (a broader rule let them "
            f"through): {comparison.missing}"
        )
        assert not comparison.outside_names, f"{user} used objects its rules' resourceNames leave out"


def test_every_verb_manifests_rbac_grants_was_used(
    cluster: LocalCluster, request: pytest.FixtureRequest
) -> None:
    why = partial_session(request.session)
    if why is not None:
        pytest.skip(f"only the whole tier can show a grant unused: {why}")
    found = comparisons(cluster)
    unused = found[rbac_audit.OPERATOR_USER].unused
    assert not unused, (
        "manifests/rbac.yaml grants (apiGroup, resource, verb) that the operator never used in the whole "
        f"end-to-end tier: {unused}. Drop them (and from manifests/namespaced/watched-namespace/role.yaml), "
        "or, if a code path needs one that the tier cannot reach, name it in ALLOWED_UNUSED "
        f"(tests/support/rbac_audit.py) with the reason. Grants used: {REPORT}"
    )
    # The namespaced install's ClusterRole holds Kopf's cluster-wide reads alone: each is used by the
    # namespaced operator (test_install.py). Its Role mirrors rbac.yaml's namespaced rules
    # (tests/unit/artifacts/test_manifests.py), so the check above covers those.
    namespaced = found[NAMESPACED_USER]
    cluster_role = rbac_audit.granted(
        rbac_audit.rules_of(
            rbac_audit.documents(rbac_audit.MANIFESTS / "namespaced" / "cluster-role.yaml"), "ClusterRole"
        )
    )
    assert not sorted(set(cluster_role) - set(namespaced.used)), (
        "manifests/namespaced/cluster-role.yaml grants what the namespaced operator never used"
    )
