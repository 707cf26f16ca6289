"""spec.registry.trackingUri as the CRD's CEL rules and the spec parser read it: both refuse the same
URLs (tests/e2e/test_crd.py proves the rules on a real API server). A base path is the server's (an
MLflow under /mlflow); a query or fragment would swallow the API path MLflow appends and let the URL
choose any path and query on the host (http://10.0.3.7:9200/_admin/x?)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aliasroll.errors import InvalidSpec
from aliasroll.spec import parse_spec

CRD = Path(__file__).resolve().parents[3] / "crds" / "modeldeployments.aliasroll.io.yaml"


def tracking_uri_rules() -> list[dict[str, str]]:
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    rules: list[dict[str, str]] = spec["registry"]["properties"]["trackingUri"]["x-kubernetes-validations"]
    return rules


def cel_refusal(value: str) -> str | None:
    """The message of the first rule that refuses `value`; the rules are all `[!]self.matches('re')`,
    and CEL's matches (RE2, unanchored) reads these patterns as Python's re.search does."""
    for rule in tracking_uri_rules():
        match = re.fullmatch(r"(!?)self\.matches\('(.*)'\)", rule["rule"])
        assert match is not None, f"a rule this test cannot read: {rule['rule']}"
        negated, pattern = match.group(1) == "!", match.group(2).replace("\\\\", "\\")
        if (re.search(pattern, value) is not None) == negated:
            return rule["message"]
    return None


def parser_refusal(uri: str) -> str | None:
    try:
        parse_spec({"model": {"name": "m"}, "registry": {"trackingUri": uri}})
    except InvalidSpec as error:
        return f"{error.field_path}: {error}"
    return None


@pytest.mark.parametrize(
    ("uri", "refused_for"),
    [
        ("http://mlflow.mlflow.svc.cluster.local:5000", None),
        ("https://tools.example.com/mlflow", None),
        ("https://tools.example.com/mlflow/", None),
        ("http://10.0.3.7:5000", None),
        ("http://[fd00::7]:5000/ml", None),
        ("http://10.0.3.7:9200/_admin/x?", "query (?) or fragment (#)"),
        ("http://127.0.0.1:8080/internal/admin/users?ignored=", "query (?) or fragment (#)"),
        ("http://mlflow:5000?x=1", "query (?) or fragment (#)"),
        ("http://mlflow:5000/#/models", "query (?) or fragment (#)"),
        ("http://mlflow:5000#", "query (?) or fragment (#)"),
        ("https://user:secret@mlflow.example.com", "must not hold credentials"),
        ("databricks", "http:// or https://"),
        ("ftp://mlflow", "http:// or https://"),
    ],
)
def test_the_crd_and_the_parser_refuse_the_same_tracking_uris(uri: str, refused_for: str | None) -> None:
    from_crd = cel_refusal(uri)
    from_parser = parser_refusal(uri)
    if refused_for is None:
        assert from_crd is None
        assert from_parser is None
    else:
        assert from_crd is not None
        assert from_parser is not None
        assert refused_for in from_crd
        assert from_parser.startswith("spec.registry.trackingUri: ")
        assert refused_for in from_parser
