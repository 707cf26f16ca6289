"""The CRD as users meet it: `kubectl apply -f crds/`, printer columns, bad input refused at apply time."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hack.crdgen import crdgen
from harness import Kube, model_deployment

GOOD = model_deployment("good", "sentiment", "http://mlflow:5000")


def with_spec(path: str, value: Any, *, name: str = "bad", base: dict[str, Any] = GOOD) -> dict[str, Any]:
    """GOOD (or `base`) with one field changed; `value` None deletes the field."""
    body = copy.deepcopy(base)
    body["metadata"]["name"] = name
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return body


WARM = with_spec("spec.rollback", {"window": "30m"})
BAKE_RULES = {"errorRate": {"maxPercent": 1}}
GATE = {
    "data": "runs:/0a1b2c/holdout.parquet",
    "target": "label",
    "modelType": "classifier",
    "thresholds": [{"metric": "accuracy_score", "higherIsBetter": True, "threshold": 0.8}],
}


def gated(**gate: Any) -> dict[str, Any]:
    return with_spec("spec.canary", {"weight": 10, "gate": {**GATE, **gate}})


BAD = [
    ("weight -1", with_spec("spec.canary", {"weight": -1}), "spec.canary.weight"),
    ("weight 101", with_spec("spec.canary", {"weight": 101}), "spec.canary.weight"),
    ("empty model name", with_spec("spec.model.name", ""), "spec.model.name"),
    ("blank model name", with_spec("spec.model.name", "   "), "spec.model.name"),
    ("model missing", with_spec("spec.model", None), "spec.model"),
    (
        "canary alias equals production alias",
        with_spec("spec.canary", {"alias": "production", "weight": 10}),
        "spec.canary.alias",
    ),
    ("unknown router", with_spec("spec.traffic", {"router": "istio"}), "spec.traffic.router"),
    ("bad poll interval", with_spec("spec.registry.pollInterval", "often"), "spec.registry.pollInterval"),
    ("poll interval too long", with_spec("spec.registry.pollInterval", "48h"), "spec.registry.pollInterval"),
    ("reserved alias", with_spec("spec.model.alias", "v2"), "spec.model.alias"),
    ("alias with a space", with_spec("spec.model.alias", "my alias"), "spec.model.alias"),
    ("registry not http", with_spec("spec.registry.trackingUri", "databricks"), "spec.registry.trackingUri"),
    (
        "credentials in the URL",
        with_spec("spec.registry.trackingUri", "https://user:secret@mlflow.example.com"),
        "spec.registry.trackingUri",
    ),
    # MLflow appends its API path to the URL: after a ? or # it would pick any path and query.
    (
        "query in the registry URL",
        with_spec("spec.registry.trackingUri", "http://10.0.3.7:9200/_admin/x?"),
        "spec.registry.trackingUri must not have a query (?) or fragment (#)",
    ),
    (
        "fragment in the registry URL",
        with_spec("spec.registry.trackingUri", "http://mlflow:5000/#/models"),
        "spec.registry.trackingUri must not have a query (?) or fragment (#)",
    ),
    ("negative replicas", with_spec("spec.replicas", -1), "spec.replicas"),
    (
        "canary replicas with the replicas router",
        with_spec("spec.canary", {"weight": 10, "replicas": 2}),
        "spec.canary.replicas",
    ),
    (
        "gatewayAPI settings with the replicas router",
        with_spec("spec.traffic", {"gatewayAPI": {"hostnames": ["a.example.com"]}}),
        "spec.traffic.gatewayAPI",
    ),
    (
        "operator-owned env var",
        with_spec("spec.serving", {"env": [{"name": "MODEL_URI", "value": "x"}]}),
        "spec.serving.env",
    ),
    ("name too long for Services", with_spec("metadata.name", "n" * 53), "metadata.name"),
    # Server-side apply of the Deployment would fail on these later, far from the user's eyes.
    (
        "env name twice",
        with_spec("spec.serving", {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
        'spec.serving.env[1]: Duplicate value: {"name":"A"}',
    ),
    (
        "unknown field in an env item",
        with_spec("spec.serving", {"env": [{"name": "A", "valu": "1"}]}),
        'unknown field "spec.serving.env[0].valu"',
    ),
    (
        "env value and valueFrom",
        with_spec(
            "spec.serving",
            {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        ),
        "an item sets value or valueFrom, not both",
    ),
    (
        "env valueFrom without a key",
        with_spec("spec.serving", {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}),
        "spec.serving.env[0].valueFrom.secretKeyRef.key: Required value",
    ),
    (
        "resources not quantities",
        with_spec("spec.serving", {"resources": {"limits": {"memory": "lots"}}}),
        "spec.serving.resources.limits.memory",
    ),
    (
        "scratch size not a quantity",
        with_spec("spec.serving", {"scratchSize": "big"}),
        "spec.serving.scratchSize",
    ),
    (
        "pod label the operator selects by",
        with_spec(
            "spec.serving", {"podTemplate": {"metadata": {"labels": {"aliasroll.io/track": "canary"}}}}
        ),
        "spec.serving.podTemplate.metadata.labels cannot set app.kubernetes.io/managed-by",
    ),
    (
        "pod label managed-by",
        with_spec(
            "spec.serving",
            {"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}}},
        ),
        "the operator selects its pods by them",
    ),
    (
        "pod annotation the operator pins versions with",
        with_spec(
            "spec.serving",
            {"podTemplate": {"metadata": {"annotations": {"aliasroll.io/model-uri": "models:/x/1"}}}},
        ),
        "spec.serving.podTemplate.metadata.annotations cannot set aliasroll.io/*",
    ),
    (
        "root user",
        with_spec("spec.serving", {"podTemplate": {"spec": {"securityContext": {"runAsUser": 0}}}}),
        "runAsUser cannot be 0: serving pods run as non-root",
    ),
    (
        "root group",
        with_spec("spec.serving", {"podTemplate": {"spec": {"securityContext": {"runAsGroup": 0}}}}),
        "runAsGroup cannot be 0: serving pods run as non-root",
    ),
    (
        "privileged setting outside the offered ones",
        with_spec("spec.serving", {"podTemplate": {"spec": {"hostNetwork": True}}}),
        'unknown field "spec.serving.podTemplate.spec.hostNetwork"',
    ),
    (
        "toleration seconds as text",
        with_spec(
            "spec.serving",
            {"podTemplate": {"spec": {"tolerations": [{"key": "gpu", "tolerationSeconds": "soon"}]}}},
        ),
        "spec.serving.podTemplate.spec.tolerations[0].tolerationSeconds",
    ),
    (
        "admin port = serving port (the Services would route clients to /metrics)",
        with_spec("spec.serving", {"port": 9090}),
        "spec.serving.adminPort must differ from spec.serving.port",
    ),
    (
        "ADMIN_PORT in env (the operator sets it)",
        with_spec("spec.serving", {"env": [{"name": "ADMIN_PORT", "value": "8080"}]}),
        "spec.serving.env cannot set",
    ),
    (
        "image pull secret without a name",
        with_spec("spec.serving", {"podTemplate": {"spec": {"imagePullSecrets": [{}]}}}),
        "spec.serving.podTemplate.spec.imagePullSecrets[0].name: Required value",
    ),
    # spec.rollback (issue 23): the window its bound.
    (
        "rollback without a window",
        with_spec("spec.rollback", {"maxWarm": 2}),
        "spec.rollback.window: Required value",
    ),
    (
        "rollback window not a duration",
        with_spec("spec.rollback", {"window": "half an hour"}),
        "spec.rollback.window must be a duration such as 30m, 2h or 0s",
    ),
    (
        "rollback window over 24h",
        with_spec("spec.rollback", {"window": "24h1s"}),
        "spec.rollback.window must be at most 24h",
    ),
    ("no warm version", with_spec("spec.rollback", {"window": "30m", "maxWarm": 0}), "spec.rollback.maxWarm"),
    (
        "six warm versions",
        with_spec("spec.rollback", {"window": "30m", "maxWarm": 6}),
        "spec.rollback.maxWarm",
    ),
    ("warm floor 0", with_spec("spec.rollback", {"window": "30m", "floor": 0}), "spec.rollback.floor"),
    ("warm floor 1001", with_spec("spec.rollback", {"window": "30m", "floor": 1001}), "spec.rollback.floor"),
    # spec.rollback.bake (issue 23): a duration within the window, and the canary analysis' rules.
    (
        "bake longer than the window",
        with_spec("spec.rollback", {"window": "30m", "bake": {"duration": "1h", "analysis": BAKE_RULES}}),
        "spec.rollback.bake.duration must be at most spec.rollback.window",
    ),
    (
        "bake longer than a window in other units",
        with_spec("spec.rollback", {"window": "90s", "bake": {"duration": "1m31s", "analysis": BAKE_RULES}}),
        "shorten bake.duration or lengthen window",
    ),
    (
        "bake duration not a duration",
        with_spec(
            "spec.rollback", {"window": "30m", "bake": {"duration": "ten minutes", "analysis": BAKE_RULES}}
        ),
        "spec.rollback.bake.duration must be a duration such as 10m or 1h",
    ),
    (
        "bake without analysis",
        with_spec("spec.rollback", {"window": "30m", "bake": {"duration": "10m"}}),
        "spec.rollback.bake.analysis: Required value",
    ),
    (
        "bake analysis without a bound",
        with_spec(
            "spec.rollback", {"window": "30m", "bake": {"duration": "10m", "analysis": {"interval": "30s"}}}
        ),
        "spec.rollback.bake.analysis needs errorRate and/or latencyP99 limits",
    ),
    (
        "bake analysis with relative bounds only",
        with_spec(
            "spec.rollback",
            {
                "window": "30m",
                "bake": {"duration": "10m", "analysis": {"errorRate": {"maxIncreasePoints": 1}}},
            },
        ),
        "spec.rollback.bake.analysis needs errorRate.maxPercent and/or latencyP99.maxMilliseconds",
    ),
    (
        "bake analysis failureLimit 0",
        with_spec(
            "spec.rollback",
            {"window": "30m", "bake": {"duration": "10m", "analysis": {**BAKE_RULES, "failureLimit": 0}}},
        ),
        "spec.rollback.bake.analysis.failureLimit",
    ),
    # spec.canary.gate (issue 24): the holdout from the registry's artifacts, thresholds with a bound.
    ("gate data from the web", gated(data="https://example.com/holdout.csv"), "spec.canary.gate.data"),
    ("gate data not a table", gated(data="runs:/0a1b2c/holdout.json"), "spec.canary.gate.data"),
    (
        "gate without target",
        with_spec("spec.canary", {"weight": 10, "gate": {**GATE, "target": ""}}),
        "spec.canary.gate.target",
    ),
    ("gate model type", gated(modelType="ranker"), "spec.canary.gate.modelType"),
    ("gate without thresholds", gated(thresholds=[]), "spec.canary.gate.thresholds"),
    (
        "gate threshold without a bound",
        gated(thresholds=[{"metric": "accuracy_score", "higherIsBetter": True}]),
        "spec.canary.gate.thresholds[] needs a bound",
    ),
    (
        "gate threshold without a direction",
        gated(thresholds=[{"metric": "accuracy_score", "threshold": 0.8}]),
        "higherIsBetter",
    ),
    (
        "gate metric twice",
        gated(thresholds=[GATE["thresholds"][0], GATE["thresholds"][0]]),
        "spec.canary.gate.thresholds",
    ),
    (
        "gate gain of 0",
        gated(thresholds=[{"metric": "f1_score", "higherIsBetter": True, "minAbsoluteChange": 0}]),
        "minAbsoluteChange",
    ),
    (
        "gate relative gain over 1",
        gated(thresholds=[{"metric": "f1_score", "higherIsBetter": True, "minRelativeChange": 2}]),
        "minRelativeChange",
    ),
    ("gate timeout over 1h", gated(timeout="61m"), "spec.canary.gate.timeout must be from 1s to 1h"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD, ids=[case[0] for case in BAD])
def test_bad_resources_are_refused_naming_the_field(
    kube: Kube, namespace: str, case: str, body: dict[str, Any], field: str
) -> None:
    result = kube.try_apply(body, namespace=namespace)
    assert result.returncode != 0, f"{case}: accepted"
    assert field in result.stderr, f"{case}: {result.stderr}"
    assert kube.get("mdep", body["metadata"]["name"], namespace) is None


def test_defaults_and_printer_columns(kube: Kube, namespace: str) -> None:
    kube.apply(GOOD, namespace=namespace)
    stored = kube.get("modeldeployment", "good", namespace)
    assert stored is not None
    assert stored["spec"]["model"]["alias"] == "production"
    assert stored["spec"]["registry"]["pollInterval"] == "1s"
    assert stored["spec"]["traffic"]["router"] == "replicas"
    assert stored["spec"]["serving"]["port"] == 8080
    assert stored["spec"]["serving"]["adminPort"] == 9090
    assert stored["spec"]["serving"]["scratchSize"] == "10Gi"

    header = kube.cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()[0].split()
    assert header == [
        "NAME",
        "MODEL",
        "ALIAS",
        "PRODUCTION",
        "CANARY",
        "WEIGHT",
        "PHASE",
        "STEP",
        "WARM",
        "READY",
        "AGE",
    ]
    wide = kube.cluster.kubectl("get", "mdep", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert "REASON" in wide


def test_kubectl_explain_describes_the_fields(kube: Kube) -> None:
    """Every field has a description (tests/unit/artifacts/test_crd_descriptions.py); the API server
    serves them."""
    for path, said in (
        ("modeldeployment.spec.registry", "The MLflow server whose Model Registry holds the model"),
        ("modeldeployment.status.canary.weight", "Share of requests (percent) the canary gets now"),
        ("modeldeployment.status.lastCanary.phase", "How it ended: Aborted"),
        ("modeldeployment.spec.serving.podTemplate.spec.tolerations", "toleration"),
        ("modeldeployment.spec.rollback.window", "How long a version stays warm after it leaves @production"),
        ("modeldeployment.status.fastSwitch.kind", "rollback (back to a warm version)"),
        (
            "modeldeployment.spec.canary.gate.thresholds.minRelativeChange",
            "0 means not worse than production",
        ),
        ("modeldeployment.status.canary.gate.verdict", "passed, failed"),
    ):
        explained = " ".join(kube.cluster.kubectl("explain", path).stdout.split())
        assert said in explained, f"{path}: {explained}"


def test_an_ended_canary_run_is_kept_and_reads_right(kube: Kube, namespace: str) -> None:
    """The status an ended run leaves (no status.canary, the record in lastCanary, the history's
    outcome) is stored as written, and `kubectl get` shows no canary, phase or step."""
    body = with_spec("spec.canary", {"steps": [{"weight": 20, "duration": "1m"}]}, name="ended")
    # A RuntimeClass the session's operator does not allow: if an operator runs beside this test, it
    # refuses the resource (Ready=False, everything else in status kept as written) instead of
    # writing a status of its own between the patch below and the read.
    body["spec"].setdefault("serving", {})["podTemplate"] = {"spec": {"runtimeClassName": "not-allowed-here"}}
    kube.apply(body, namespace=namespace)
    record = {
        "version": "4",
        "phase": "Aborted",
        "step": "1/1",
        "endedAt": "2026-11-23T12:10:00Z",
        "message": "aborted after 2 failed measurement(s): Failed: canary error rate 12.50% > limit 1.00%",
        "analysis": {
            "verdict": "Failed",
            "failures": 2,
            "metrics": [{"metric": "errorRate", "verdict": "Failed", "canary": 12.5, "bound": 1.0}],
        },
    }
    status = {
        "observedGeneration": 1,
        "production": {"alias": "production", "version": "3", "modelUri": "models:/sentiment/3"},
        "traffic": {"router": "replicas", "requestedCanaryWeight": 0, "canaryWeight": 0, "message": "..."},
        "lastCanary": record,
        "history": [
            {"track": "production", "model": "sentiment", "version": "3", "from": "2026-11-23T12:00:00Z"},
            {
                "track": "canary",
                "model": "sentiment",
                "version": "4",
                "from": "2026-11-23T12:05:00Z",
                "to": "2026-11-23T12:11:00Z",
                "reason": "CanaryStarted",
                "outcome": "Aborted",
            },
        ],
    }
    patched = kube.cluster.kubectl(
        "patch",
        "mdep",
        "ended",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        "-o",
        "json",
    ).stdout
    stored = json.loads(patched)["status"]
    assert stored["lastCanary"] == record, "nothing of the record is pruned"
    assert stored["history"][1]["outcome"] == "Aborted"
    row = kube.cluster.kubectl("get", "mdep", "ended", "-n", namespace, "--no-headers").stdout.split()
    # NAME MODEL ALIAS PRODUCTION (CANARY) WEIGHT (PHASE) (STEP) READY AGE: the empty cells vanish.
    assert row[:5] == ["ended", "sentiment", "production", "3", "0"], row


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        pytest.param(WARM, {"window": "30m", "maxWarm": 1}, id="window only, router defaulted"),
        pytest.param(
            with_spec("spec.traffic", {"router": "replicas"}, base=WARM),
            {"window": "30m", "maxWarm": 1},
            id="the replicas router named",
        ),
        pytest.param(with_spec("spec.rollback", {"window": "0s"}), {"window": "0s", "maxWarm": 1}, id="0s"),
        pytest.param(
            with_spec("spec.rollback", {"window": "24h", "maxWarm": 5, "floor": 1000}),
            {"window": "24h", "maxWarm": 5, "floor": 1000},
            id="the bounds",
        ),
        pytest.param(
            with_spec("spec.rollback", {"window": "1h30m", "maxWarm": 1, "floor": 1}),
            {"window": "1h30m", "maxWarm": 1, "floor": 1},
            id="the low bounds",
        ),
        pytest.param(
            with_spec(
                "spec.rollback", {"window": "30m", "bake": {"duration": "30m", "analysis": BAKE_RULES}}
            ),
            {
                "window": "30m",
                "maxWarm": 1,
                "bake": {
                    "duration": "30m",
                    "analysis": {**BAKE_RULES, "interval": "30s", "minRequests": 20, "failureLimit": 2},
                },
            },
            id="a bake as long as the window, its analysis defaulted",
        ),
        pytest.param(
            with_spec(
                "spec.rollback", {"window": "1h", "bake": {"duration": "59m59s", "analysis": BAKE_RULES}}
            ),
            {
                "window": "1h",
                "maxWarm": 1,
                "bake": {
                    "duration": "59m59s",
                    "analysis": {**BAKE_RULES, "interval": "30s", "minRequests": 20, "failureLimit": 2},
                },
            },
            id="a bake in other units than the window",
        ),
    ],
)
def test_a_rollback_window_is_accepted_with_its_defaults(
    kube: Kube, namespace: str, body: dict[str, Any], stored: dict[str, Any]
) -> None:
    result = kube.try_apply(body, namespace=namespace)
    assert result.returncode == 0, result.stderr
    found = kube.get("mdep", body["metadata"]["name"], namespace)
    assert found is not None
    assert found["spec"]["rollback"] == stored


REMOVAL_REFUSED = (
    "spec.rollback cannot be removed once set: its versions run as one Deployment each; set "
    "spec.rollback.window: 0s to keep no version warm, or delete and re-create the ModelDeployment"
)


def test_a_rollback_window_once_set_cannot_be_removed(kube: Kube, namespace: str) -> None:
    kept = with_spec("spec.rollback", {"window": "30m", "maxWarm": 2}, name="kept")
    kube.apply(kept, namespace=namespace)
    without = with_spec("spec.rollback", None, name="kept", base=kept)
    refused = kube.try_apply(without, namespace=namespace)
    assert refused.returncode != 0, "the removal was accepted"
    assert REMOVAL_REFUSED in refused.stderr, refused.stderr
    # Nor with a null, as a merge patch or a GitOps tool would send it.
    patched = kube.cluster.kubectl(
        "patch",
        "mdep",
        "kept",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"rollback":null}}',
        check=False,
    )
    assert patched.returncode != 0, "the removal by a null was accepted"
    assert REMOVAL_REFUSED in patched.stderr, patched.stderr
    # Other changes, and a window of 0s (what the message offers), are accepted.
    kube.apply(with_spec("spec.replicas", 3, name="kept", base=kept), namespace=namespace)
    kube.apply(with_spec("spec.rollback", {"window": "0s"}, name="kept"), namespace=namespace)
    stored = kube.get("mdep", "kept", namespace)
    assert stored is not None
    assert stored["spec"]["rollback"] == {"window": "0s", "maxWarm": 1}
    # Deleted and re-created, the resource may do without it.
    kube.cluster.kubectl("delete", "mdep", "kept", "-n", namespace, "--wait=true")
    result = kube.try_apply(without, namespace=namespace)
    assert result.returncode == 0, result.stderr


def test_a_rollback_window_can_be_added_and_resources_without_one_change_freely(
    kube: Kube, namespace: str
) -> None:
    plain = with_spec("spec.replicas", 2, name="plain")
    kube.apply(plain, namespace=namespace)
    kube.apply(with_spec("spec.replicas", 3, name="plain"), namespace=namespace)  # oldSelf has no rollback
    added = with_spec("spec.rollback", {"window": "10m"}, name="plain")
    result = kube.try_apply(added, namespace=namespace)
    assert result.returncode == 0, result.stderr
    # Either router keeps versions warm: a change of router is an ordinary update.
    to_gateway = with_spec("spec.traffic", {"router": "gatewayAPI"}, name="plain", base=added)
    result = kube.try_apply(to_gateway, namespace=namespace)
    assert result.returncode == 0, result.stderr


def test_a_bake_is_stored_as_written(kube: Kube, namespace: str) -> None:
    """status.bake keeps every field the operator writes (nothing pruned); its phase is one of four."""
    body = with_spec(
        "spec.rollback", {"window": "30m", "bake": {"duration": "10m", "analysis": BAKE_RULES}}, name="baked"
    )
    body["spec"].setdefault("serving", {})["podTemplate"] = {"spec": {"runtimeClassName": "not-allowed-here"}}
    kube.apply(body, namespace=namespace)
    bake = {
        "model": "sentiment",
        "version": "4",
        "previous": "3",
        "phase": "Failed",
        "startedAt": "2026-12-07T12:31:10Z",
        "until": "2026-12-07T12:41:10Z",
        "failures": 2,
        "failureLimit": 2,
        "verdict": "Failed",
        "measuredAt": "2026-12-07T12:33:10Z",
        "readAt": "2026-12-07T12:33:40Z",
        "metrics": [
            {
                "metric": "errorRate",
                "verdict": "Failed",
                "canary": 7.5,
                "bound": 1,
                "boundKind": "absolute",
                "relativeSkipped": True,
            }
        ],
        "message": "failed after 2 failed measurement(s): error rate 7.50% above its bound 1.00% (absolute)",
        "endedAt": "2026-12-07T12:33:10Z",
        "aliasWrite": "Attempted",
    }

    def patch(status: dict[str, Any]) -> Any:
        return kube.cluster.kubectl(
            "patch",
            "mdep",
            "baked",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
            "-o",
            "json",
            check=False,
        )

    written = patch({"observedGeneration": 1, "bake": bake})
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout)["status"]["bake"] == bake, "nothing of status.bake is pruned"
    refused = patch({"bake": {**bake, "phase": "Burnt"}})
    assert refused.returncode != 0
    assert "status.bake.phase" in refused.stderr


def test_the_warm_versions_are_stored_as_written_and_shown(kube: Kube, namespace: str) -> None:
    """status.warm and status.fastSwitch keep every field the operator writes (nothing pruned), and
    the Warm column shows a warm version."""
    body = with_spec("spec.rollback", {"window": "30m", "maxWarm": 2}, name="warm")
    # As in the ended-canary test: an operator running beside refuses the resource, keeps this status.
    body["spec"].setdefault("serving", {})["podTemplate"] = {"spec": {"runtimeClassName": "not-allowed-here"}}
    kube.apply(body, namespace=namespace)
    warm = [
        {
            "model": "sentiment",
            "version": "3",
            "since": "2026-12-07T12:00:00Z",
            "until": "2026-12-07T12:30:00Z",
            "replicas": 1,
            "routed": False,
        },
        {
            "model": "sentiment",
            "version": "2",
            "since": "2026-12-07T11:00:00Z",
            "replicas": 2,
            "routed": True,
        },
    ]
    switch = {
        "kind": "rollback",
        "since": "2026-12-07T12:31:04Z",
        "from": {"model": "sentiment", "version": "4"},
        "to": {"model": "sentiment", "version": "3"},
    }
    status = {
        "observedGeneration": 1,
        "production": {"alias": "production", "version": "4", "modelUri": "models:/sentiment/4"},
        "warm": warm,
        "fastSwitch": switch,
    }
    patched = kube.cluster.kubectl(
        "patch",
        "mdep",
        "warm",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        "-o",
        "json",
    ).stdout
    stored = json.loads(patched)["status"]
    assert stored["warm"] == warm, "nothing of status.warm is pruned"
    assert stored["fastSwitch"] == switch, "nothing of status.fastSwitch is pruned"
    header, row = kube.cluster.kubectl("get", "mdep", "warm", "-n", namespace).stdout.splitlines()[:2]
    # Columns are left-aligned under their headers: the cell starts where WARM does.
    cell = row[header.index("WARM") :].split()[0]
    # The API server prints the first value of a printer column's JSONPath, not every one.
    assert cell == "3", (header, row)
    # The kind is rollback or promotion, nothing else.
    bad = json.dumps({"status": {"fastSwitch": {**switch, "kind": "sideways"}}})
    refused = kube.cluster.kubectl(
        "patch",
        "mdep",
        "warm",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        bad,
        check=False,
    )
    assert refused.returncode != 0
    assert "status.fastSwitch.kind" in refused.stderr, refused.stderr


def test_unknown_env_fields_are_pruned_not_stored(kube: Kube, namespace: str) -> None:
    """Without strict validation (older clients, GitOps tools) a typo is dropped, not kept to break SSA."""
    body = with_spec("spec.serving", {"env": [{"name": "A", "value": "1", "valu": "2"}]}, name="pruned")
    kube.cluster.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", input=json.dumps(body))
    stored = kube.get("mdep", "pruned", namespace)
    assert stored is not None
    assert stored["spec"]["serving"]["env"] == [{"name": "A", "value": "1"}]


def test_a_full_pod_template_is_accepted(kube: Kube, namespace: str) -> None:
    serving = {
        "serviceAccountName": "model-reader",
        "credentialsSecretRef": {"name": "read-only"},
        "scratchSize": "20Gi",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}},
        "env": [
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "podTemplate": {
            "metadata": {"labels": {"team": "search"}, "annotations": {"prometheus.io/scrape": "true"}},
            "spec": {
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {"matchLabels": {"team": "search"}},
                                },
                            }
                        ]
                    }
                },
                "imagePullSecrets": [{"name": "regcred"}],
                "priorityClassName": "high",
                "runtimeClassName": "nvidia",
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                    }
                ],
                "securityContext": {
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "fsGroup": 1000,
                    "supplementalGroups": [5],
                },
            },
        },
    }
    body = with_spec("spec.serving", serving, name="full")
    result = kube.try_apply(body, namespace=namespace)
    assert result.returncode == 0, result.stderr
    stored = kube.get("mdep", "full", namespace)
    assert stored is not None
    assert stored["spec"]["serving"] == {
        **serving,
        "port": 8080,
        "adminPort": 9090,
        "dependencies": "install",
    }


def test_schema_source_is_the_running_kubernetes(kube: Kube) -> None:
    """hack/crdgen's excerpt of Kubernetes' OpenAPI is what this API server serves: no drift after an upgrade.

    The API server adds `enum` lists (and their description) that the published spec leaves out; the
    CRD keeps to the published one, so it never refuses what Kubernetes itself accepts (`effect: ""`).
    """
    served = json.loads(kube.cluster.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
    source = yaml.safe_load(crdgen.SOURCE.read_text())
    assert without_enums(crdgen.excerpt(served, source)) == crdgen.load_definitions(), (
        "run: make -C hack crd-openapi"
    )


def without_enums(node: Any) -> Any:
    if isinstance(node, list):
        return [without_enums(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: without_enums(value) for key, value in node.items() if key != "enum"}
    if "enum" in node and isinstance(out.get("description"), str):
        out["description"] = out["description"].split("\n\nPossible enum values:")[0]
    return out
