"""The install manifests agree with each other: the namespaced install grants what the cluster-wide one does.

manifests/rbac.yaml is the cluster-wide install's ClusterRole (the e2e tests run the operator with it, so
a missing rule fails them); manifests/namespaced/ grants the same namespaced rules through a Role in each
watched namespace. These checks keep the two from drifting apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aliasroll.config import OperatorConfig
from aliasroll.egress import NODE, OWN_POD, Destinations
from support.install import namespaced_kustomizations

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"
NAMESPACED = MANIFESTS / "namespaced"
EXAMPLE = REPO / "examples" / "install-namespaced"

# (apiGroup, resource) pairs of rbac.yaml that are cluster-scoped: granted by a ClusterRole in both installs.
# A rule for anything else is taken as namespaced and must be in the Role of each watched namespace.
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    """Every (apiGroup, resource, verb) a list of PolicyRules allows, expanded one by one."""
    expanded = set()
    for rule in rules:
        assert "resourceNames" not in rule, "rules naming objects need a comparison that knows them"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    expanded.add((group, resource, verb))
    return expanded


def is_cluster_scoped(grant: Grant) -> bool:
    return (grant[0], grant[1]) in CLUSTER_SCOPED


CLUSTER_WIDE = grants(only(documents(MANIFESTS / "rbac.yaml"), "ClusterRole")["rules"])
ROLE_DOCS = documents(NAMESPACED / "watched-namespace" / "role.yaml")
NAMESPACED_ROLE = grants(only(ROLE_DOCS, "Role")["rules"])
NAMESPACED_CLUSTER_ROLE = grants(only(documents(NAMESPACED / "cluster-role.yaml"), "ClusterRole")["rules"])


def test_the_role_covers_every_namespaced_rule_of_the_cluster_wide_install() -> None:
    namespaced = {grant for grant in CLUSTER_WIDE if not is_cluster_scoped(grant)}
    missing = sorted(namespaced - NAMESPACED_ROLE)
    assert not missing, (
        "manifests/rbac.yaml grants these namespaced (apiGroup, resource, verb) that "
        f"manifests/namespaced/watched-namespace/role.yaml does not: {missing}"
    )


def test_the_role_holds_nothing_cluster_scoped() -> None:
    # A Role cannot grant cluster-scoped resources: such a rule would only look like it works.
    assert not {grant for grant in NAMESPACED_ROLE if is_cluster_scoped(grant)}


def test_the_cluster_role_keeps_exactly_the_cluster_scoped_rules() -> None:
    cluster_scoped = {grant for grant in CLUSTER_WIDE if is_cluster_scoped(grant)}
    assert cluster_scoped, "rbac.yaml grants Kopf's cluster-scoped reads (CRDs, namespaces)"
    assert cluster_scoped == NAMESPACED_CLUSTER_ROLE, (
        "manifests/namespaced/cluster-role.yaml must hold the cluster-scoped rules of manifests/rbac.yaml "
        "and nothing namespaced (those go in the Role)"
    )


def test_secrets_are_watched_not_read_by_name_in_both_installs() -> None:
    # Each referenced Secret is read once per change, by a list+watch with a field selector on its
    # name: list and watch are needed, and a get is not (nothing reads a Secret any other way).
    for install in (CLUSTER_WIDE, NAMESPACED_ROLE):
        assert {verb for group, resource, verb in install if (group, resource) == ("", "secrets")} == {
            "list",
            "watch",
        }


def test_pods_are_only_watched_in_both_installs() -> None:
    for install in (CLUSTER_WIDE, NAMESPACED_ROLE):
        assert {verb for group, resource, verb in install if (group, resource) == ("", "pods")} == {
            "list",
            "watch",
        }


def test_pod_status_is_only_patched_in_both_installs() -> None:
    # The readiness gate (spec.rollback) is a condition in the pods' status: a patch of it, nothing
    # else (no update, no get: the pods come from the watch above).
    for install in (CLUSTER_WIDE, NAMESPACED_ROLE):
        assert {verb for group, resource, verb in install if (group, resource) == ("", "pods/status")} == {
            "patch"
        }


def test_the_role_binding_binds_the_role_to_the_operators_service_account() -> None:
    account = only(documents(MANIFESTS / "rbac.yaml"), "ServiceAccount")["metadata"]["name"]
    operator_namespace = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["namespace"]
    role = only(ROLE_DOCS, "Role")
    binding = only(ROLE_DOCS, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": operator_namespace}
    ]


def test_every_watched_namespace_has_a_role_and_a_namespace_flag() -> None:
    install = yaml.safe_load((EXAMPLE / "kustomization.yaml").read_text())
    with_role = set()
    for resource in install["resources"][1:]:
        folder = EXAMPLE / resource
        assert folder.parent == EXAMPLE, f"{resource}: one folder per watched namespace"
        with_role.add(yaml.safe_load((folder / "kustomization.yaml").read_text())["namespace"])
    [args_patch] = [
        patch for patch in install["patches"] if patch.get("target", {}).get("kind") == "Deployment"
    ]
    flags = set()
    for op in yaml.safe_load(args_patch["patch"]):
        assert (op["op"], op["path"]) == ("add", "/spec/template/spec/containers/0/args/-")
        flag, _, namespace = op["value"].partition("=")
        assert flag == "--namespace", op
        assert namespace, op
        flags.add(namespace)
    assert with_role, "the example watches one namespace"
    assert flags == with_role, "each watched namespace needs both its Role folder and its --namespace flag"


def test_the_tests_write_the_namespaced_install_the_example_shows() -> None:
    """The end-to-end and install tiers apply tests/support/install.py's kustomizations for namespaces of
    their own; for the example's namespace they are the example's, file for file."""
    written = namespaced_kustomizations(EXAMPLE, ["ml-serving"])
    example = {path: yaml.safe_load(path.read_text()) for path in EXAMPLE.rglob("kustomization.yaml")}
    assert written == example


def test_the_service_and_the_scrape_annotations_reach_the_ports_the_operator_listens_on() -> None:
    deployment = only(documents(MANIFESTS / "operator.yaml"), "Deployment")
    service = only(documents(MANIFESTS / "service.yaml"), "Service")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ALIASROLL_WEBHOOK_LISTEN"] == f"0.0.0.0:{ports['webhooks']}"
    assert env["ALIASROLL_METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    assert {port["targetPort"] for port in service["spec"]["ports"]} == {"webhooks", "metrics"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # The registries' secrets are a file from an optional Secret: an install without it runs, polling
    # alone. The single-secret setting of earlier releases still reaches the operator (which asks
    # for its tracking URI), from its optional Secret.
    mount = Path(env["ALIASROLL_WEBHOOK_REGISTRIES"]).parent
    [volume_mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == mount]
    assert volume_mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[volume_mount["name"]]["secret"] == {"secretName": "aliasroll-webhooks", "optional": True}
    for name, key in (
        ("ALIASROLL_WEBHOOK_SECRET", "secret"),
        ("ALIASROLL_WEBHOOK_TRACKING_URI", "trackingUri"),
    ):
        [item] = [item for item in container["env"] if item["name"] == name]
        assert item["valueFrom"]["secretKeyRef"] == {
            "name": "aliasroll-webhook",
            "key": key,
            "optional": True,
        }
    assert "service.yaml" in documents(MANIFESTS / "kustomization.yaml")[0]["resources"]


def test_two_replicas_elect_a_leader_on_a_lease_of_their_own_namespace() -> None:
    operator = documents(MANIFESTS / "operator.yaml")
    deployment = only(operator, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["ALIASROLL_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    budget = only(operator, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]

    rbac = documents(MANIFESTS / "rbac.yaml")
    role = only(rbac, "Role")  # a Role (the operator's namespace only), never in the ClusterRole
    # Read and renew only the operator's own Lease (the config's default name); create any (RBAC
    # cannot limit create to a name).
    lease = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    assert role["rules"] == [
        {**lease, "resourceNames": [OperatorConfig().lease_name], "verbs": ["get", "update"]},
        {**lease, "verbs": ["create"]},
    ]
    assert not {grant for grant in CLUSTER_WIDE if grant[1] == "leases"}
    binding = only(rbac, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "aliasroll", "namespace": "aliasroll-system"}
    ]


def test_the_deployment_tells_the_operator_its_node_s_and_pod_s_addresses_to_refuse() -> None:
    # aliasroll.egress refuses a tenant URL that points at the operator's node or its own pod only
    # when it knows their addresses: the downward API gives them (every family: hostIPs, podIPs).
    deployment = only(documents(MANIFESTS / "operator.yaml"), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["HOST_IPS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIPs"}}
    assert env["POD_IPS"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIPs"}}
    # As the kubelet fills them in: comma-separated, one per family.
    destinations = Destinations.from_env({"HOST_IPS": "10.1.0.4,fd00::4", "POD_IPS": "10.244.0.7,fd01::7"})
    assert NODE in (destinations.check("http://10.1.0.4:5000") or "")
    assert NODE in (destinations.check("http://[fd00::4]:5000") or "")
    assert OWN_POD in (destinations.check("http://10.244.0.7:8081") or "")
    assert destinations.check("http://10.1.0.5:5000") is None
