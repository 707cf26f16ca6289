"""The CRD as users meet it: `kubectl apply -f crds/`, printer columns, bad input refused at apply time."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from harness import Kube, model_deployment

GOOD = model_deployment("good", "sentiment", "http://mlflow:5000")


def with_spec(path: str, value: Any, *, name: str = "bad") -> dict[str, Any]:
    """GOOD with one field changed; `value` None deletes the field."""
    body = copy.deepcopy(GOOD)
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

    header = kube.cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "ALIAS", "PRODUCTION", "CANARY", "WEIGHT", "READY", "AGE"]
    wide = kube.cluster.kubectl("get", "mdep", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert "REASON" in wide
