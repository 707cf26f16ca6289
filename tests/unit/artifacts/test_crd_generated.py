"""The committed CRD's spec.serving is exactly what hack/crdgen renders, and is a real schema throughout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hack.crdgen import crdgen  # the repository root is on pytest's pythonpath

from aliasroll.spec import OPERATOR_ENV, OPERATOR_LABELS


def serving_schema() -> dict[str, Any]:
    crd = yaml.safe_load(crdgen.CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "serving"
    ]
    return schema


def walk(node: Any, path: str = "serving") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, prop in node.get("properties", {}).items():
            yield from walk(prop, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}[]" if key == "items" else f"{path}{{}}")


def test_committed_crd_is_the_generators_output() -> None:
    assert crdgen.CRD.read_text() == crdgen.expected_crd(), "run: make -C hack crd"


def test_the_rest_of_the_crd_is_left_as_it_is() -> None:
    text = crdgen.CRD.read_text()
    rendered = crdgen.render_crd(text, {"type": "object"})
    before, after = text.split(crdgen.BEGIN)[0], text.split(crdgen.END)[1]
    assert rendered.startswith(before)
    assert rendered.endswith(after)


def test_no_open_ended_or_unresolved_schema_under_serving() -> None:
    for path, node in walk(serving_schema()):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert not any(key.startswith("x-crdgen") or key in ("$ref", "allOf", "oneOf") for key in node), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), (
                f"{path}: list-map keys must be required"
            )


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("serving.env", ["name"]),
        ("serving.podTemplate.spec.imagePullSecrets", ["name"]),
        ("serving.podTemplate.spec.topologySpreadConstraints", ["topologyKey", "whenUnsatisfiable"]),
    ],
)
def test_lists_keyed_as_kubernetes_keys_them(path: str, keys: list[str]) -> None:
    node = dict(walk(serving_schema()))[path]
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == keys


def test_env_value_from_offers_the_pod_sources() -> None:
    value_from = dict(walk(serving_schema()))["serving.env[].valueFrom"]
    assert sorted(value_from["properties"]) == [
        "configMapKeyRef",
        "fieldRef",
        "resourceFieldRef",
        "secretKeyRef",
    ]


def test_cel_rules_name_what_the_operator_reserves() -> None:
    nodes = dict(walk(serving_schema()))
    env_rules = " ".join(rule["rule"] for rule in nodes["serving.env[]"]["x-kubernetes-validations"])
    assert all(f"'{name}'" in env_rules for name in OPERATOR_ENV)
    label_rules = " ".join(
        rule["rule"] for rule in nodes["serving.podTemplate.metadata.labels"]["x-kubernetes-validations"]
    )
    assert all(f"'{label}'" in label_rules for label in OPERATOR_LABELS)
    assert "'aliasroll.io/'" in label_rules


def test_excerpt_keeps_only_the_named_properties() -> None:
    full = {
        "components": {
            "schemas": {
                "io.k8s.api.core.v1.PodSpec": {
                    "properties": {
                        "tolerations": {
                            "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Toleration"}
                        },
                        "containers": {
                            "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}
                        },
                    },
                    "required": ["containers"],
                },
                "io.k8s.api.core.v1.Toleration": {"type": "object"},
                "io.k8s.api.core.v1.Container": {"type": "object"},
            }
        }
    }
    source = {"properties": {"tolerations": {crdgen.FROM: "io.k8s.api.core.v1.PodSpec#tolerations"}}}
    picked = crdgen.excerpt(full, source)
    assert sorted(picked) == ["io.k8s.api.core.v1.PodSpec", "io.k8s.api.core.v1.Toleration"]
    assert list(picked["io.k8s.api.core.v1.PodSpec"]["properties"]) == ["tolerations"]
