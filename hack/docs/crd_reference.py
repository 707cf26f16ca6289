"""The ModelDeployment reference page, rendered from the CRD's own schema and descriptions.

The CRD (crds/modeldeployments.aliasroll.io.yaml) is what `kubectl explain` shows and what the API
server validates against, so the reference is built from it and from nothing else: a field, a default,
a bound or a CEL rule added there shows up in the docs on the next build. The docs site renders it at
build time (hack/docs/hooks.py replaces MARKER in docs/reference/modeldeployment.md), so the page has no
committed copy that could drift.

The parts of `spec.serving` that are Kubernetes' own types (hack/crdgen/serving.yaml, `x-crdgen-from`:
env, resources, tolerations, affinity, ...) are shown one level deep; below that they are the Pod's
fields, documented by Kubernetes and by `kubectl explain`.

    python hack/docs/crd_reference.py     # print the rendered Markdown
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CRD = REPO / "crds" / "modeldeployments.aliasroll.io.yaml"
SERVING_SOURCE = REPO / "hack" / "crdgen" / "serving.yaml"
MARKER = "<!-- crd-reference: rendered from the CRD by hack/docs/crd_reference.py -->"

# Sections of the page: each top-level field of spec and status gets its own table.
SECTION_DEPTH = 2


@dataclass(frozen=True)
class Field:
    path: str  # as kubectl explain spells it, without the kind: spec.canary.steps[].weight
    schema: dict[str, Any]
    required: bool


def version(crd: Path = CRD) -> dict[str, Any]:
    (found,) = yaml.safe_load(crd.read_text())["spec"]["versions"]
    return dict(found)


def kubernetes_types(source: Path = SERVING_SOURCE) -> set[str]:
    """Paths (spec.serving....) whose schema is a Kubernetes type inlined by hack/crdgen."""
    found: set[str] = set()

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        if "x-crdgen-from" in node:
            found.add(path)
            return
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(yaml.safe_load(source.read_text()), "spec.serving")
    return found


def fields(node: dict[str, Any], path: str = "") -> Iterator[Field]:
    """Every property under `node`, depth first, in the schema's order."""
    required = set(node.get("required") or ())
    for name, prop in (node.get("properties") or {}).items():
        child = f"{path}.{name}" if path else name
        yield Field(child, prop, name in required)
        yield from _below(prop, child)


def _below(prop: dict[str, Any], path: str) -> Iterator[Field]:
    yield from fields(prop, path)
    items = prop.get("items")
    if isinstance(items, dict) and (items.get("properties") or isinstance(items.get("items"), dict)):
        yield from _below(items, f"{path}[]")
    values = prop.get("additionalProperties")
    if isinstance(values, dict) and values.get("properties"):
        yield from fields(values, f"{path}{{}}")


def _depth(path: str) -> int:
    return path.count(".") + 1


def shown(path: str, roots: set[str]) -> bool:
    """False below the first level of a Kubernetes type (those are the Pod's own fields)."""
    for root in roots:
        if path.startswith(root) and path != root and path[len(root)] in ".[":
            rest = path[len(root) :].removeprefix("[]")
            if rest.count(".") > 1:
                return False
    return True


def _escape(text: str) -> str:
    """Plain text for a Markdown table cell: no HTML, no emphasis, no links, no column breaks."""
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    if kind == "array":
        items = schema.get("items") or {}
        return f"array of {_type(items)}" if isinstance(items, dict) and items.get("type") else "array"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    if kind:
        fmt = schema.get("format")
        return f"{kind} ({fmt})" if fmt else str(kind)
    if schema.get("anyOf") or schema.get("oneOf"):
        return "one of several"
    return "any"


def _facts(field: Field) -> list[str]:
    schema = field.schema
    facts: list[str] = []
    if field.required:
        facts.append("**Required.**")
    if "default" in schema:
        facts.append(f"Default: `{_code(schema['default'])}`.")
    if schema.get("enum"):
        facts.append("One of " + ", ".join(f"`{_code(value)}`" for value in schema["enum"]) + ".")
    bounds = [
        f"{label} {schema[key]}"
        for key, label in (
            ("minimum", "at least"),
            ("maximum", "at most"),
            ("minLength", "at least"),
            ("maxLength", "at most"),
            ("minItems", "at least"),
            ("maxItems", "at most"),
        )
        if key in schema
    ]
    if bounds:
        unit = " characters" if {"minLength", "maxLength"} & schema.keys() else ""
        unit = " items" if {"minItems", "maxItems"} & schema.keys() else unit
        facts.append("Bounds: " + ", ".join(bounds) + unit + ".")
    if schema.get("pattern"):
        facts.append(f"Pattern: `{_code(schema['pattern'])}`.")
    for rule in schema.get("x-kubernetes-validations") or ():
        message = rule.get("message") or rule.get("rule")
        facts.append(f"Refused: {_escape(str(message))}.")
    return facts


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return text.replace("|", "\\|").replace("`", "'")


def _row(field: Field, roots: set[str]) -> str:
    description = _escape(str(field.schema.get("description") or ""))
    parts = [description, *_facts(field)]
    if field.path in roots:
        parts.append(
            f"Kubernetes' own schema: `kubectl explain modeldeployment.{field.path.replace('[]', '')}`."
        )
    cell = " ".join(part for part in parts if part)
    return f"| `{field.path}` | {_escape(_type(field.schema))} | {cell} |"


def render(crd: Path = CRD, source: Path = SERVING_SOURCE) -> str:
    """The Markdown of the reference: the resource's header, then one table per top-level field."""
    found = version(crd)
    schema = found["schema"]["openAPIV3Schema"]
    roots = kubernetes_types(source)
    out: list[str] = []
    out.append(f"API version `aliasroll.io/{found['name']}`, kind `ModelDeployment` (short name `mdep`).")
    out.append("")
    out.append(_escape(str(schema.get("description") or "")))
    out.append("")
    rules = schema.get("x-kubernetes-validations") or ()
    if rules:
        out.append("Refused at `kubectl apply`:")
        out.append("")
        out.extend(f"- {_escape(str(rule.get('message') or rule.get('rule')))}" for rule in rules)
        out.append("")
    columns = found.get("additionalPrinterColumns") or ()
    if columns:
        out.append("## Columns of `kubectl get mdep`")
        out.append("")
        out.append("| column | shows | meaning |")
        out.append("|---|---|---|")
        for column in columns:
            wide = " (only with `-o wide`)" if column.get("priority") else ""
            meaning = _escape(str(column.get("description") or "")) + wide
            out.append(f"| {column['name'].upper()} | `{_code(column['jsonPath'])}` | {meaning} |")
        out.append("")
    section: str | None = None
    for field in fields(schema):
        if field.path in ("apiVersion", "kind", "metadata") or not shown(field.path, roots):
            continue
        top = ".".join(field.path.split(".")[:SECTION_DEPTH])
        if _depth(field.path) < SECTION_DEPTH:
            out.append("")
            out.append(f"## `{field.path}`")
            out.append("")
            out.append(_escape(str(field.schema.get("description") or "")))
            # spec's own rules: those that read two of its fields, or the stored object (oldSelf).
            rules = field.schema.get("x-kubernetes-validations") or ()
            if rules:
                out.append("")
                out.append("Refused at `kubectl apply`:")
                out.append("")
                out.extend(f"- {_escape(str(rule.get('message') or rule.get('rule')))}" for rule in rules)
            section = None
            continue
        if top != section:
            section = top
            out.append("")
            out.append(f"### `{top}`")
            out.append("")
            out.append("| field | type | description |")
            out.append("|---|---|---|")
        out.append(_row(field, roots))
    out.append("")
    return "\n".join(out)


def fill(markdown: str, crd: Path = CRD, source: Path = SERVING_SOURCE) -> str:
    """The page's Markdown with the marker replaced by the rendered reference."""
    if MARKER not in markdown:
        raise ValueError(f"the reference page has lost its marker: {MARKER}")
    return markdown.replace(MARKER, render(crd, source))


if __name__ == "__main__":
    print(render())
