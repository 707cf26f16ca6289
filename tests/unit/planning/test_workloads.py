"""The serving pods the operator builds: spec.serving in, pod template out; the operator's own fields win.
Which registry credentials the pods hold (never the operator's by default), and where the dependency
cache is (the operator's setting, one part per namespace)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest
from builders import OWNER, spec

from aliasroll import reasons
from aliasroll.conditions import FALSE, TRUE
from aliasroll.planning.state import ServedVersion
from aliasroll.planning.workloads import (
    DEPENDENCY_CACHE_PATH,
    TERMINATION_GRACE_SECONDS,
    DependencySettings,
    WorkloadDefaults,
    deployment,
    pod_credentials_condition,
    pod_disruption_budget,
    service,
    track_selector,
)
from aliasroll.spec import ModelDeploymentSpec, PodSettings, Track

VERSION = ServedVersion(model="sentiment", version="4", run_id="run-4")
REGISTRY = {"trackingUri": "http://mlflow:5000", "credentialsSecretRef": {"name": "operator-creds"}}
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
            ]
        }
    }
}
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}


def build(the_spec: ModelDeploymentSpec, track: Track = Track.PRODUCTION) -> dict[str, Any]:
    return deployment(
        owner=OWNER, spec=the_spec, track=track, version=VERSION, replicas=2, defaults=WorkloadDefaults()
    )


def template(serving: dict[str, Any]) -> dict[str, Any]:
    built: dict[str, Any] = build(spec(registry=REGISTRY, serving=serving))["spec"]["template"]
    return built


def container(serving: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = template(serving)["spec"]["containers"]
    return only


# (case, spec.serving, where to look in the pod template, what is expected there)
CASES: list[tuple[str, dict[str, Any], str, Any]] = [
    ("no API token by default", {}, "spec.automountServiceAccountToken", False),
    ("no service account by default", {}, "spec.serviceAccountName", None),
    (
        "own service account gets its token",
        {"serviceAccountName": "reader"},
        "spec.automountServiceAccountToken",
        True,
    ),
    ("own service account is used", {"serviceAccountName": "reader"}, "spec.serviceAccountName", "reader"),
    # Review 2026-12 finding 3: pods got spec.registry.credentialsSecretRef, the operator's
    # write-capable Secret, by default.
    ("pods get no registry credentials by default, never the operator's", {}, "container.envFrom", None),
    (
        "pods get their own Secret when given",
        {"credentialsSecretRef": {"name": "read-only"}},
        "container.envFrom",
        [{"secretRef": {"name": "read-only"}}],
    ),
    (
        "pods get the operator's Secret only when spec.serving names it (the explicit opt-in)",
        {"credentialsSecretRef": {"name": "operator-creds"}},
        "container.envFrom",
        [{"secretRef": {"name": "operator-creds"}}],
    ),
    (
        "why a version cannot start is the server's redacted message, never the log",
        {},
        "container.terminationMessagePolicy",
        "File",
    ),
    (
        "scratch is limited to 10Gi by default",
        {},
        "spec.volumes",
        [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}],
    ),
    (
        "scratch size as asked",
        {"scratchSize": "50Gi"},
        "spec.volumes",
        [{"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}}],
    ),
    (
        "preStop sleeps while endpoints drop the pod",
        {},
        "container.lifecycle",
        {"preStop": {"sleep": {"seconds": 5}}},
    ),
    ("grace covers preStop and the server's drain", {}, "spec.terminationGracePeriodSeconds", 40),
    (
        "tolerations for tainted GPU nodes",
        {"podTemplate": {"spec": {"tolerations": [TOLERATION]}}},
        "spec.tolerations",
        [TOLERATION],
    ),
    (
        "node selector",
        {"podTemplate": {"spec": {"nodeSelector": {"gpu": "a100"}}}},
        "spec.nodeSelector",
        {"gpu": "a100"},
    ),
    ("affinity", {"podTemplate": {"spec": {"affinity": AFFINITY}}}, "spec.affinity", AFFINITY),
    (
        "pull secrets for a private registry",
        {"podTemplate": {"spec": {"imagePullSecrets": [{"name": "regcred"}]}}},
        "spec.imagePullSecrets",
        [{"name": "regcred"}],
    ),
    (
        "priority class",
        {"podTemplate": {"spec": {"priorityClassName": "high"}}},
        "spec.priorityClassName",
        "high",
    ),
    (
        "runtime class",
        {"podTemplate": {"spec": {"runtimeClassName": "nvidia"}}},
        "spec.runtimeClassName",
        "nvidia",
    ),
    (
        "topology spread",
        {"podTemplate": {"spec": {"topologySpreadConstraints": [SPREAD]}}},
        "spec.topologySpreadConstraints",
        [SPREAD],
    ),
    (
        "user and groups beside the operator's non-root and seccomp settings",
        {
            "podTemplate": {
                "spec": {
                    "securityContext": {
                        "runAsUser": 1000,
                        "runAsGroup": 3000,
                        "fsGroup": 2000,
                        "supplementalGroups": [4000],
                    }
                }
            }
        },
        "spec.securityContext",
        {
            "runAsUser": 1000,
            "runAsGroup": 3000,
            "fsGroup": 2000,
            "supplementalGroups": [4000],
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    ),
    (
        "labels are added to the operator's",
        {"podTemplate": {"metadata": {"labels": {"team": "search"}}}},
        "metadata.labels",
        {
            "team": "search",
            "app.kubernetes.io/managed-by": "aliasroll",
            "app.kubernetes.io/instance": "sentiment",
            "app.kubernetes.io/component": "model-server",
            "aliasroll.io/modeldeployment": "sentiment",
            "aliasroll.io/track": "production",
            "aliasroll.io/model-version": "4",
        },
    ),
    (
        "annotations are added to the operator's",
        {"podTemplate": {"metadata": {"annotations": {"prometheus.io/scrape": "true"}}}},
        "metadata.annotations",
        {
            "prometheus.io/scrape": "true",
            "aliasroll.io/model-uri": "models:/sentiment/4",
            "aliasroll.io/run-id": "run-4",
        },
    ),
    ("nothing the user did not ask for", {}, "spec.tolerations", None),
]


def look(built: dict[str, Any], where: str) -> Any:
    if where.startswith("container."):
        (only,) = built["spec"]["containers"]
        return only.get(where.removeprefix("container."))
    section, key = where.split(".")
    return built[section].get(key)


@pytest.mark.parametrize(("case", "serving", "where", "expected"), CASES, ids=[case[0] for case in CASES])
def test_serving_settings_shape_the_pod_template(
    case: str, serving: dict[str, Any], where: str, expected: Any
) -> None:
    assert look(template(serving), where) == expected, case


def overridden(**pod_settings: Any) -> ModelDeploymentSpec:
    """A spec whose pod settings bypass parsing (as from a resource older than the CRD's rules)."""
    the_spec = spec(registry=REGISTRY)
    settings = PodSettings(**pod_settings)
    return dataclasses.replace(the_spec, serving=dataclasses.replace(the_spec.serving, pod=settings))


def test_the_operators_labels_and_annotations_win() -> None:
    the_spec = overridden(
        labels=MappingProxyType({"app.kubernetes.io/instance": "other", "aliasroll.io/track": "canary"}),
        annotations=MappingProxyType({"aliasroll.io/model-uri": "models:/other/1"}),
    )
    built = build(the_spec)["spec"]["template"]
    assert built["metadata"]["labels"]["app.kubernetes.io/instance"] == "sentiment"
    assert built["metadata"]["labels"]["aliasroll.io/track"] == "production"
    assert built["metadata"]["annotations"]["aliasroll.io/model-uri"] == "models:/sentiment/4"


def test_the_operators_env_wins() -> None:
    the_spec = spec(registry=REGISTRY, serving={"env": [{"name": "EXTRA", "value": "1"}]})
    forged = dataclasses.replace(
        the_spec,
        serving=dataclasses.replace(
            the_spec.serving,
            env=(*the_spec.serving.env, MappingProxyType({"name": "MODEL_URI", "value": "x"})),
        ),
    )
    (only,) = build(forged)["spec"]["template"]["spec"]["containers"]
    names = [item["name"] for item in only["env"]]
    assert names == [
        "MODEL_URI",
        "MLFLOW_TRACKING_URI",
        "PORT",
        "ADMIN_PORT",
        "SCRATCH_DIR",
        "ALIASROLL_TRACK",
        "EXTRA",
    ]
    assert only["env"][0]["value"] == "models:/sentiment/4"


def test_user_env_keeps_value_from() -> None:
    item = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}
    env = container({"env": [item]})["env"]
    assert env[-1] == item
    assert isinstance(env[-1]["valueFrom"], dict), "manifests hold plain dicts, not the spec's frozen ones"


def test_the_operators_probes_and_container_security_are_kept() -> None:
    only = container({"podTemplate": {"spec": {"securityContext": {"runAsUser": 1000}}}})
    assert only["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert only["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_grace_outlasts_prestop_and_the_server_drain() -> None:
    # preStop 5 s + DRAIN_SECONDS (20 by default in the serving image) + margin
    assert TERMINATION_GRACE_SECONDS > 5 + 20


def disruptions_allowed(budget: dict[str, Any], *, expected: int, healthy: int) -> int:
    """Evictions the disruption controller allows (pkg/controller/disruption), for integer budgets."""
    if "maxUnavailable" in budget:
        desired_healthy = max(0, expected - budget["maxUnavailable"])
    else:
        desired_healthy = budget["minAvailable"]
    return max(0, healthy - desired_healthy)


# The invariant: a drain always makes progress (every healthy track lets one pod go), and a track of
# two or more pods never loses a second one before the first one's replacement is ready.
BUDGETS = [
    # (replicas of the track, its budget), each case named for what it keeps
    pytest.param(1, {"maxUnavailable": 1}, id="replicas-1-the-pod-may-be-evicted-so-drains-complete"),
    pytest.param(2, {"maxUnavailable": 1}, id="replicas-2-one-pod-at-a-time"),
    pytest.param(10, {"maxUnavailable": 1}, id="replicas-10-one-pod-at-a-time"),
]


@pytest.mark.parametrize(("replicas", "budget"), BUDGETS)
def test_pod_disruption_budget_per_track(replicas: int, budget: dict[str, int]) -> None:
    for track in Track:
        pdb = pod_disruption_budget(owner=OWNER, track=track, replicas=replicas)
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["kind"] == "PodDisruptionBudget"
        assert pdb["metadata"]["name"] == f"sentiment-{track.value}"
        assert pdb["metadata"]["namespace"] == "ml"
        assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert pdb["spec"] == {
            "selector": {"matchLabels": track_selector(OWNER, track)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            **budget,
        }
        assert disruptions_allowed(pdb["spec"], expected=replicas, healthy=replicas) >= 1, (
            "a node drain is never blocked for good"
        )
        if replicas >= 2:
            assert disruptions_allowed(pdb["spec"], expected=replicas, healthy=replicas - 1) == 0, (
                "one pod at a time"
            )
        assert build(spec(), track)["spec"]["selector"] == pdb["spec"]["selector"], (
            "it selects the track's pods"
        )


# (case, spec.registry's Secret, spec.serving's, expected (status, reason) or None, words of the message)
CREDENTIALS: list[tuple[str, str | None, str | None, tuple[str, str] | None, list[str]]] = [
    ("no Secret anywhere: no condition", None, None, None, []),
    (
        "the operator's Secret and none for the pods: a warning naming the field",
        "operator-creds",
        None,
        (FALSE, reasons.POD_CREDENTIALS_NOT_SET),
        ["spec.serving.credentialsSecretRef", "read-only", "'operator-creds'"],
    ),
    (
        "the pods get the operator's own Secret: kept as asked, and said",
        "operator-creds",
        "operator-creds",
        (FALSE, reasons.OPERATOR_CREDENTIALS_SHARED),
        ["'operator-creds'", "move aliases", "read-only"],
    ),
    (
        "a Secret of their own",
        "operator-creds",
        "read-only",
        (TRUE, reasons.POD_CREDENTIALS_SET),
        ["'read-only'", "not the operator's"],
    ),
    ("a Secret for the pods alone", None, "read-only", (TRUE, reasons.POD_CREDENTIALS_SET), ["'read-only'"]),
]


@pytest.mark.parametrize(
    ("case", "operator", "pods", "expected", "words"), CREDENTIALS, ids=[c[0] for c in CREDENTIALS]
)
def test_pod_credentials_condition(
    case: str, operator: str | None, pods: str | None, expected: tuple[str, str] | None, words: list[str]
) -> None:
    registry: dict[str, Any] = {"trackingUri": "http://mlflow:5000"}
    if operator:
        registry["credentialsSecretRef"] = {"name": operator}
    serving = {"credentialsSecretRef": {"name": pods}} if pods else {}
    condition = pod_credentials_condition(spec(registry=registry, serving=serving))
    if expected is None:
        assert condition is None, case
        return
    assert condition is not None, case
    assert (condition.type, condition.status, condition.reason) == (reasons.POD_CREDENTIALS, *expected)
    for word in words:
        assert word in condition.message, (case, condition.message)


HOST = DependencySettings(cache_host_path="/var/cache/aliasroll")
CLAIM = DependencySettings(cache_claim="aliasroll-dependencies")
ON: dict[str, Any] = {"dependencyCache": {"enabled": True}}

# (case, the operator's settings, spec.serving, the cache volume, its mount, the pods' dependency env)
CACHES: list[tuple[str, DependencySettings, dict[str, Any], Any, Any, dict[str, str]]] = [
    ("no cache asked, none mounted", HOST, {}, None, None, {}),
    ("asked, but the operator has none: scratch", DependencySettings(), ON, None, None, {}),
    ("turned off", HOST, {"dependencyCache": {"enabled": False}}, None, None, {}),
    (
        # Review 2026-12 finding 2: the tenant chose any hostPath, one directory for every namespace.
        "the operator's node directory, this namespace's part of it only",
        HOST,
        ON,
        {"name": "dependency-cache", "hostPath": {"path": "/var/cache/aliasroll", "type": "Directory"}},
        {"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH, "subPath": "ml"},
        {
            "ALIASROLL_DEPENDENCY_CACHE": DEPENDENCY_CACHE_PATH,
            "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES": str(20 * 2**30),
        },
    ),
    (
        "the operator's claim, one per namespace",
        CLAIM,
        ON,
        {"name": "dependency-cache", "persistentVolumeClaim": {"claimName": "aliasroll-dependencies"}},
        {"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH},
        {
            "ALIASROLL_DEPENDENCY_CACHE": DEPENDENCY_CACHE_PATH,
            "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES": str(20 * 2**30),
        },
    ),
    (
        "a resource stored with the old hostPath gets the operator's cache, not its path",
        HOST,
        {"dependencyCache": {"hostPath": {"path": "/"}}},
        {"name": "dependency-cache", "hostPath": {"path": "/var/cache/aliasroll", "type": "Directory"}},
        {"name": "dependency-cache", "mountPath": DEPENDENCY_CACHE_PATH, "subPath": "ml"},
        {
            "ALIASROLL_DEPENDENCY_CACHE": DEPENDENCY_CACHE_PATH,
            "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES": str(20 * 2**30),
        },
    ),
    ("an image that has everything needs no cache", HOST, {**ON, "dependencies": "image"}, None, None, {}),
    (
        "the operator allows direct references and builds",
        DependencySettings(direct_references=True, source_builds=True),
        {},
        None,
        None,
        {"ALIASROLL_DIRECT_REFERENCES": "on", "ALIASROLL_SOURCE_BUILDS": "on"},
    ),
]


@pytest.mark.parametrize(
    ("case", "settings", "serving", "volume", "mount", "env"), CACHES, ids=[c[0] for c in CACHES]
)
def test_the_dependency_cache_is_the_operators_one_part_per_namespace(
    case: str,
    settings: DependencySettings,
    serving: dict[str, Any],
    volume: Any,
    mount: Any,
    env: dict[str, str],
) -> None:
    built = deployment(
        owner=OWNER,
        spec=spec(serving=serving),
        track=Track.PRODUCTION,
        version=VERSION,
        replicas=1,
        defaults=WorkloadDefaults(dependencies=settings),
    )["spec"]["template"]["spec"]
    (only,) = built["containers"]
    volumes = [item for item in built["volumes"] if item["name"] == "dependency-cache"]
    mounts = [item for item in only["volumeMounts"] if item["name"] == "dependency-cache"]
    assert volumes == ([volume] if volume else []), case
    assert mounts == ([mount] if mount else []), case
    names = {"ALIASROLL_DEPENDENCY_CACHE", "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES"}
    names |= {"ALIASROLL_DIRECT_REFERENCES", "ALIASROLL_SOURCE_BUILDS"}
    assert {item["name"]: item["value"] for item in only["env"] if item["name"] in names} == env, case


# (case, the operator's environment, the settings, or the words of why it refuses to start)
SETTINGS: list[tuple[str, dict[str, str], DependencySettings | str]] = [
    ("nothing set: no cache, wheels from the index only", {}, DependencySettings()),
    (
        "a node directory",
        {
            "ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": "/var/cache/aliasroll/",
            "ALIASROLL_DEPENDENCY_CACHE_SIZE": "5Gi",
        },
        DependencySettings(cache_host_path="/var/cache/aliasroll", cache_max_bytes=5 * 2**30),
    ),
    (
        "a claim, and what the admin allows",
        {
            "ALIASROLL_DEPENDENCY_CACHE_CLAIM": "deps",
            "ALIASROLL_DEPENDENCY_DIRECT_REFERENCES": "true",
            "ALIASROLL_DEPENDENCY_SOURCE_BUILDS": "on",
        },
        DependencySettings(cache_claim="deps", direct_references=True, source_builds=True),
    ),
    (
        "both",
        {"ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": "/c", "ALIASROLL_DEPENDENCY_CACHE_CLAIM": "deps"},
        "not both",
    ),
    ("a relative directory", {"ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": "cache"}, "absolute directory"),
    ("the node's root", {"ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": "/"}, "absolute directory"),
    ("a way out", {"ALIASROLL_DEPENDENCY_CACHE_HOST_PATH": "/var/cache/../../etc"}, "without '..'"),
    ("not a claim name", {"ALIASROLL_DEPENDENCY_CACHE_CLAIM": "Deps_1"}, "not a PersistentVolumeClaim name"),
    ("not a size", {"ALIASROLL_DEPENDENCY_CACHE_SIZE": "lots"}, "not a size"),
    ("not a flag", {"ALIASROLL_DEPENDENCY_SOURCE_BUILDS": "maybe"}, "not true or false"),
]


@pytest.mark.parametrize(("case", "env", "expected"), SETTINGS, ids=[c[0] for c in SETTINGS])
def test_dependency_settings(case: str, env: dict[str, str], expected: DependencySettings | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(SystemExit, match=expected):
            DependencySettings.from_env(env)
    else:
        assert DependencySettings.from_env(env) == expected, case


def test_services_route_only_the_serving_port_and_the_admin_port_is_the_probes() -> None:
    """/metrics, /version, /ready and /live are on the container's admin port, which no Service
    targets: a client of the Service (or of a route to it) never reaches them."""
    the_spec = spec(registry=REGISTRY, serving={"port": 5000, "adminPort": 5001})
    made = service(owner=OWNER, name="sentiment", selector={"a": "b"}, spec=the_spec)
    assert made["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    (container,) = build(the_spec)["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 5000, "admin": 5001}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert (env["PORT"], env["ADMIN_PORT"]) == ("5000", "5001")
