"""Every field of the CRD says what it is (`kubectl explain modeldeployment.<path>`), and every
`kubectl get mdep` shown in the README or the docs has the CRD's printer columns, in order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "crds" / "modeldeployments.aliasroll.io.yaml"
# The docs that show `kubectl get mdep`: every sample there must match the columns.
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
    *sorted((REPO / "examples").rglob("*.md")),
]


def version() -> dict[str, Any]:
    (found,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    return dict(found)


def properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property under `node`, and every object schema of an array's items or a map's values."""
    for name, prop in (node.get("properties") or {}).items():
        yield f"{path}.{name}", prop
        yield from properties(prop, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        child = node.get(key)
        if isinstance(child, dict):
            if child.get("type") == "object" or "properties" in child:
                yield f"{path}{suffix}", child
            yield from properties(child, f"{path}{suffix}")
    for key in ("anyOf", "oneOf", "allOf"):
        for alternative in node.get(key) or ():
            yield from properties(alternative, path)


def test_the_walk_sees_nested_items_and_maps() -> None:
    paths = {path for path, _ in properties(version()["schema"]["openAPIV3Schema"], "")}
    for expected in (
        ".spec.canary.steps[]",
        ".spec.traffic.gatewayAPI.parentRefs[].port",
        ".spec.serving.podTemplate.spec.tolerations[]",
        ".status.canary.analysis.metrics[].bound",
        ".status.lastCanary.analysis.metrics[]",
        ".status.history[].outcome",
        ".status.conditions[].lastTransitionTime",
    ):
        assert expected in paths


# The API server refuses anything but `type: object` on the root's metadata; kubectl explain shows
# ObjectMeta's own documentation for it.
UNDESCRIBABLE = {".metadata"}


def test_every_property_has_a_description() -> None:
    missing = [
        path
        for path, prop in properties(version()["schema"]["openAPIV3Schema"], "")
        if not str(prop.get("description") or "").strip() and path not in UNDESCRIBABLE
    ]
    assert missing == [], "kubectl explain shows nothing for these: give them a description"


# --- kubectl get mdep -------------------------------------------------------------------------


def columns(*, wide: bool) -> list[str]:
    """The header kubectl prints: names upper-cased, spaces as '-', priority-1 columns with -o wide."""
    return [
        column["name"].upper().replace(" ", "-")
        for column in version()["additionalPrinterColumns"]
        if wide or not column.get("priority")
    ]


def samples() -> Iterator[tuple[str, str, bool]]:
    """(doc, header line, wide) for every `kubectl get mdep` (or modeldeployment[s]) output shown."""
    command = re.compile(r"^\$ kubectl get (mdep|modeldeployments?)\b(.*)$")
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            found = command.match(line.strip())
            if found and "-o" not in found.group(2).replace("-o wide", ""):
                yield doc.relative_to(REPO).as_posix(), lines[i + 1].strip(), "-o wide" in found.group(2)


def test_the_readme_and_the_canary_page_show_kubectl_get() -> None:
    shown = {doc for doc, _, _ in samples()}
    assert {"README.md", "docs/canary.md"} <= shown


@pytest.mark.parametrize(("doc", "header", "wide"), list(samples()))
def test_every_sample_of_kubectl_get_has_the_printer_columns(doc: str, header: str, wide: bool) -> None:
    assert header.split() == ["NAME", *columns(wide=wide)], f"{doc}: {header}"
