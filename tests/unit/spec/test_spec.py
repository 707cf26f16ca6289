"""Parsing a ModelDeployment spec: the CRD's defaults, and clear errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from aliasroll.errors import InvalidSpec
from aliasroll.spec import (
    AnalysisSpec,
    BakeSpec,
    PodSecurity,
    PodSettings,
    RollbackSpec,
    RouterKind,
    parse_duration,
    parse_spec,
)

MINIMAL: dict[str, Any] = {"model": {"name": "sentiment"}, "registry": {"trackingUri": "http://mlflow:5000"}}


def test_defaults_match_the_crd() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.model.alias == "production"
    assert spec.registry.poll_seconds == 30
    assert spec.replicas == 1
    assert spec.serving.port == 8080
    assert spec.serving.admin_port == 9090
    assert spec.traffic.router is RouterKind.REPLICAS
    assert spec.canary is None
    assert not spec.canary_wanted
    assert spec.rollback is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, field_path="x") == seconds


BAKE_RULES = {"errorRate": {"maxPercent": 1}}

BAD = [
    ("model missing", {"registry": MINIMAL["registry"]}, "spec.model"),
    ("blank model name", {**MINIMAL, "model": {"name": " "}}, "spec.model.name"),
    ("reserved alias", {**MINIMAL, "model": {"name": "m", "alias": "v3"}}, "spec.model.alias"),
    ("alias with a dot", {**MINIMAL, "model": {"name": "m", "alias": "a.b"}}, "spec.model.alias"),
    ("ftp registry", {**MINIMAL, "registry": {"trackingUri": "ftp://x"}}, "spec.registry.trackingUri"),
    (
        "bad poll interval",
        {**MINIMAL, "registry": {"trackingUri": "http://x", "pollInterval": "soon"}},
        "spec.registry.pollInterval",
    ),
    (
        "poll interval too short",
        {**MINIMAL, "registry": {"trackingUri": "http://x", "pollInterval": "10ms"}},
        "spec.registry.pollInterval",
    ),
    ("weight above 100", {**MINIMAL, "canary": {"weight": 101}}, "spec.canary.weight"),
    ("negative weight", {**MINIMAL, "canary": {"weight": -1}}, "spec.canary.weight"),
    (
        "canary alias = production alias",
        {**MINIMAL, "canary": {"alias": "production", "weight": 5}},
        "spec.canary.alias",
    ),
    ("unknown router", {**MINIMAL, "traffic": {"router": "istio"}}, "spec.traffic.router"),
    ("negative replicas", {**MINIMAL, "replicas": -1}, "spec.replicas"),
    (
        "admin port = serving port (the admin endpoints would be routed to clients)",
        {**MINIMAL, "serving": {"port": 9090}},
        "spec.serving.adminPort",
    ),
    ("admin port out of range", {**MINIMAL, "serving": {"adminPort": 0}}, "spec.serving.adminPort"),
    ("replicas as text", {**MINIMAL, "replicas": "2"}, "spec.replicas"),
    (
        "env name twice (server-side apply would refuse the Deployment)",
        {**MINIMAL, "serving": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
        "spec.serving.env",
    ),
    (
        "operator-owned env",
        {**MINIMAL, "serving": {"env": [{"name": "PORT", "value": "1"}]}},
        "spec.serving.env",
    ),
    ("env without a name", {**MINIMAL, "serving": {"env": [{"value": "1"}]}}, "spec.serving.env"),
    ("bad scratch size", {**MINIMAL, "serving": {"scratchSize": "lots"}}, "spec.serving.scratchSize"),
    (
        "label the operator selects by",
        {**MINIMAL, "serving": {"podTemplate": {"metadata": {"labels": {"aliasroll.io/track": "canary"}}}}},
        "spec.serving.podTemplate.metadata.labels",
    ),
    (
        "managed-by label",
        {
            **MINIMAL,
            "serving": {"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}}},
        },
        "spec.serving.podTemplate.metadata.labels",
    ),
    (
        "operator annotation",
        {
            **MINIMAL,
            "serving": {"podTemplate": {"metadata": {"annotations": {"aliasroll.io/model-uri": "x"}}}},
        },
        "spec.serving.podTemplate.metadata.annotations",
    ),
    (
        "root user",
        {**MINIMAL, "serving": {"podTemplate": {"spec": {"securityContext": {"runAsUser": 0}}}}},
        "spec.serving.podTemplate.spec.securityContext.runAsUser",
    ),
    (
        "root group",
        {**MINIMAL, "serving": {"podTemplate": {"spec": {"securityContext": {"runAsGroup": 0}}}}},
        "spec.serving.podTemplate.spec.securityContext.runAsGroup",
    ),
    # Review 2026-12 finding 2: group 0 opened root-group-writable files of volumes and the node.
    (
        "root group as fsGroup",
        {**MINIMAL, "serving": {"podTemplate": {"spec": {"securityContext": {"fsGroup": 0}}}}},
        "spec.serving.podTemplate.spec.securityContext.fsGroup",
    ),
    (
        "root group among the supplemental groups",
        {
            **MINIMAL,
            "serving": {"podTemplate": {"spec": {"securityContext": {"supplementalGroups": [5, 0]}}}},
        },
        "spec.serving.podTemplate.spec.securityContext.supplementalGroups",
    ),
    (
        "a dependency cache location of the tenant's choosing",
        {**MINIMAL, "serving": {"dependencyCache": {"emptyDir": {}}}},
        "spec.serving.dependencyCache",
    ),
    (
        "a dependency cache that is neither on nor off",
        {**MINIMAL, "serving": {"dependencyCache": {"enabled": "yes"}}},
        "spec.serving.dependencyCache.enabled",
    ),
    (
        "operator-owned dependency setting",
        {**MINIMAL, "serving": {"env": [{"name": "ALIASROLL_SOURCE_BUILDS", "value": "on"}]}},
        "spec.serving.env",
    ),
    ("rollback not an object", {**MINIMAL, "rollback": "30m"}, "spec.rollback"),
    ("rollback without a window", {**MINIMAL, "rollback": {"maxWarm": 2}}, "spec.rollback.window"),
    ("rollback window blank", {**MINIMAL, "rollback": {"window": ""}}, "spec.rollback.window"),
    ("rollback window as a number", {**MINIMAL, "rollback": {"window": 1800}}, "spec.rollback.window"),
    (
        "rollback window not a duration",
        {**MINIMAL, "rollback": {"window": "half an hour"}},
        "spec.rollback.window",
    ),
    ("rollback window over 24h", {**MINIMAL, "rollback": {"window": "24h1s"}}, "spec.rollback.window"),
    ("no warm version", {**MINIMAL, "rollback": {"window": "30m", "maxWarm": 0}}, "spec.rollback.maxWarm"),
    ("six warm versions", {**MINIMAL, "rollback": {"window": "30m", "maxWarm": 6}}, "spec.rollback.maxWarm"),
    ("maxWarm as text", {**MINIMAL, "rollback": {"window": "30m", "maxWarm": "2"}}, "spec.rollback.maxWarm"),
    ("floor 0", {**MINIMAL, "rollback": {"window": "30m", "floor": 0}}, "spec.rollback.floor"),
    ("floor above 1000", {**MINIMAL, "rollback": {"window": "30m", "floor": 1001}}, "spec.rollback.floor"),
    ("floor as a boolean", {**MINIMAL, "rollback": {"window": "30m", "floor": True}}, "spec.rollback.floor"),
    (
        "bake longer than the window",
        {**MINIMAL, "rollback": {"window": "10m", "bake": {"duration": "11m", "analysis": BAKE_RULES}}},
        "spec.rollback.bake.duration",
    ),
    (
        "bake without a duration",
        {**MINIMAL, "rollback": {"window": "10m", "bake": {"analysis": BAKE_RULES}}},
        "spec.rollback.bake.duration",
    ),
    (
        "bake without analysis",
        {**MINIMAL, "rollback": {"window": "10m", "bake": {"duration": "5m"}}},
        "spec.rollback.bake.analysis",
    ),
    (
        "bake analysis without a bound",
        {**MINIMAL, "rollback": {"window": "10m", "bake": {"duration": "5m", "analysis": {}}}},
        "spec.rollback.bake.analysis",
    ),
    (
        "bake analysis with relative bounds only",
        {
            **MINIMAL,
            "rollback": {
                "window": "10m",
                "bake": {"duration": "5m", "analysis": {"latencyP99": {"maxRatio": 1.5}}},
            },
        },
        "spec.rollback.bake.analysis",
    ),
    (
        "bake analysis interval below 1s",
        {
            **MINIMAL,
            "rollback": {
                "window": "10m",
                "bake": {"duration": "5m", "analysis": {**BAKE_RULES, "interval": "500ms"}},
            },
        },
        "spec.rollback.bake.analysis.interval",
    ),
    (
        "tolerations not a list",
        {**MINIMAL, "serving": {"podTemplate": {"spec": {"tolerations": {"key": "gpu"}}}}},
        "spec.serving.podTemplate.spec.tolerations",
    ),
]


@pytest.mark.parametrize(("name", "raw", "field"), BAD, ids=[case[0] for case in BAD])
def test_bad_fields_are_named(name: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    assert caught.value.field_path == field
    assert str(caught.value).startswith(field)


def test_serving_settings_are_typed_and_read_only() -> None:
    raw = {
        **MINIMAL,
        "serving": {
            "serviceAccountName": "reader",
            "credentialsSecretRef": {"name": "read-only"},
            "scratchSize": "20Gi",
            "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "podTemplate": {
                "metadata": {"labels": {"team": "search"}, "annotations": {"note": "x"}},
                "spec": {
                    "nodeSelector": {"gpu": "a100"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "imagePullSecrets": [{"name": "regcred"}],
                    "priorityClassName": "high",
                    "runtimeClassName": "nvidia",
                    "securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [5]},
                },
            },
        },
    }
    serving = parse_spec(raw).serving
    assert serving.credentials_secret == "read-only"
    assert serving.scratch_size == "20Gi"
    pod = serving.pod
    assert pod.labels == {"team": "search"}
    assert pod.image_pull_secrets == ("regcred",)
    assert (pod.priority_class_name, pod.runtime_class_name) == ("high", "nvidia")
    assert pod.security == PodSecurity(run_as_user=1000, fs_group=2000, supplemental_groups=(5,))
    assert pod.tolerations[0]["key"] == "nvidia.com/gpu"
    with pytest.raises(TypeError):
        pod.labels["team"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        serving.env[0]["valueFrom"]["secretKeyRef"]["key"] = "x"
    raw["serving"]["podTemplate"]["metadata"]["labels"]["team"] = "changed"
    assert pod.labels["team"] == "search", "the spec is a copy, not a view of the raw object"


def test_serving_defaults() -> None:
    serving = parse_spec(MINIMAL).serving
    assert serving.scratch_size == "10Gi"
    assert serving.credentials_secret is None
    assert serving.pod == PodSettings()


@pytest.mark.parametrize(
    ("serving", "enabled"),
    [
        pytest.param({}, False, id="absent-off"),
        pytest.param({"dependencyCache": {}}, True, id="given-on"),
        pytest.param({"dependencyCache": {"enabled": True}}, True, id="enabled"),
        pytest.param({"dependencyCache": {"enabled": False}}, False, id="disabled"),
        # Stored before the cache became the operator's: on, at the operator's location.
        pytest.param({"dependencyCache": {"hostPath": {"path": "/"}}}, True, id="legacy-host-path-on"),
        pytest.param(
            {"dependencyCache": {"persistentVolumeClaim": {"claimName": "c"}}}, True, id="legacy-claim-on"
        ),
    ],
)
def test_the_dependency_cache_is_only_on_or_off(serving: dict[str, Any], enabled: bool) -> None:
    assert parse_spec({**MINIMAL, "serving": serving}).serving.dependency_cache is enabled


@pytest.mark.parametrize(
    ("rollback", "parsed"),
    [
        pytest.param({"window": "30m"}, RollbackSpec(window_seconds=1800), id="window-only"),
        pytest.param(
            {"window": "1h30m", "maxWarm": 3, "floor": 2},
            RollbackSpec(window_seconds=5400, max_warm=3, floor=2),
            id="every-field",
        ),
        pytest.param({"window": "0s"}, RollbackSpec(window_seconds=0), id="window-0-keeps-none"),
        pytest.param(
            {"window": "24h", "maxWarm": 5, "floor": 1000},
            RollbackSpec(window_seconds=86400, max_warm=5, floor=1000),
            id="the-bounds",
        ),
        # Whole seconds, rounded up: a window the CRD accepts never reads as none.
        pytest.param({"window": "250ms"}, RollbackSpec(window_seconds=1), id="ms-rounded-up"),
        pytest.param({"window": "1.5s"}, RollbackSpec(window_seconds=2), id="fraction-rounded-up"),
    ],
)
def test_rollback_is_parsed_with_the_crd_defaults(rollback: dict[str, Any], parsed: RollbackSpec) -> None:
    spec = parse_spec({**MINIMAL, "rollback": rollback})
    assert spec.rollback == parsed
    assert spec.rollback is not None
    assert isinstance(spec.rollback.window_seconds, int)


def test_a_bake_is_parsed_with_the_canary_analysis_defaults() -> None:
    rollback = {"window": "30m", "bake": {"duration": "10m", "analysis": {"errorRate": {"maxPercent": 1}}}}
    parsed = parse_spec({**MINIMAL, "rollback": rollback}).rollback
    assert parsed is not None
    assert parsed.bake == BakeSpec(
        duration_seconds=600,
        analysis=AnalysisSpec(interval_seconds=30, min_requests=20, failure_limit=2, max_error_percent=1.0),
    )
    same = parse_spec({**MINIMAL, "rollback": {**rollback, "bake": {**rollback["bake"], "duration": "30m"}}})
    assert same.rollback is not None
    assert same.rollback.bake is not None


def test_rollback_null_is_absent() -> None:
    # A GitOps tool may send the field as null: the same as leaving it out.
    assert parse_spec({**MINIMAL, "rollback": None}).rollback is None


def test_rollback_works_with_either_router() -> None:
    for router in ("replicas", "gatewayAPI"):
        parsed = parse_spec({**MINIMAL, "traffic": {"router": router}, "rollback": {"window": "30m"}})
        assert parsed.rollback is not None
