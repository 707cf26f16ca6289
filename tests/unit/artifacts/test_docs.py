"""The docs site (docs/, mkdocs.yml) keeps up with the code: every module is on the architecture page,
every setting the operator reads is in the settings table (and nothing it does not read), every
condition and event reason has a troubleshooting entry, and the ModelDeployment reference renders from
the CRD, and README.md stays a short front door whose links resolve."""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "operator" / "aliasroll"
DOCS = REPO / "docs"
ARCHITECTURE = DOCS / "architecture.md"
SETTINGS = DOCS / "operations" / "settings.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
REFERENCE = DOCS / "reference" / "modeldeployment.md"
README = REPO / "README.md"
README_LIMIT = 10 * 1024

# Where the operator reads ALIASROLL_* settings: config.py and the modules it delegates to (the model
# server's own settings, serving/config.py, are the pods' environment, not the operator's).
SETTINGS_MODULES = ("config.py", "egress.py", "allowlists.py")
# planning/workloads.py also names the variables the operator *gives* the pods; only this class reads.
SETTINGS_CLASSES = {"planning/workloads.py": "DependencySettings"}
SETTING = re.compile(r"^ALIASROLL_[A-Z0-9_]+$")


def section(text: str, heading: str) -> str:
    """The body of `## heading` up to the next heading of the same level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# --- architecture: the module map --------------------------------------------------------------


def modules() -> set[str]:
    return {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}


def mapped() -> set[str]:
    rows = section(ARCHITECTURE.read_text(), "Module map").splitlines()
    return {found[1] for row in rows if (found := re.match(r"^\| `([\w/]+\.py)` \|", row))}


def test_the_package_has_modules_to_map() -> None:
    assert {"config.py", "planning/planner.py", "serving/app.py", "controller/__init__.py"} <= modules()


def test_every_module_is_on_the_architecture_page() -> None:
    missing = sorted(modules() - mapped())
    assert missing == [], f"add a row per module to the module map of {ARCHITECTURE.relative_to(REPO)}"


def test_the_architecture_page_names_no_module_that_is_gone() -> None:
    gone = sorted(mapped() - modules())
    assert gone == [], f"the module map of {ARCHITECTURE.relative_to(REPO)} names modules that do not exist"


# --- settings: the table and the code, both ways -----------------------------------------------


def _names(node: ast.AST) -> set[str]:
    return {
        child.value
        for child in ast.walk(node)
        if isinstance(child, ast.Constant) and isinstance(child.value, str) and SETTING.match(child.value)
    }


def settings_read() -> set[str]:
    """Every ALIASROLL_* name the operator's settings code spells out as a whole string."""
    found: set[str] = set()
    for name in SETTINGS_MODULES:
        found |= _names(ast.parse((PACKAGE / name).read_text()))
    for name, cls in SETTINGS_CLASSES.items():
        tree = ast.parse((PACKAGE / name).read_text())
        (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls]
        found |= _names(node)
    return found


def settings_documented() -> set[str]:
    """The ALIASROLL_* names in the first column of the settings table."""
    found: set[str] = set()
    for row in SETTINGS.read_text().splitlines():
        cells = row.split("|")
        if row.startswith("| `") and len(cells) > 2:
            found |= set(re.findall(r"`(ALIASROLL_[A-Z0-9_]+)`", cells[1]))
    return found


def test_the_code_reads_settings_the_walk_sees() -> None:
    read = settings_read()
    for expected in (
        "ALIASROLL_SERVING_IMAGE",
        "ALIASROLL_ALLOWED_DESTINATIONS",
        "ALIASROLL_ALLOWED_GATEWAYS",
        "ALIASROLL_DEPENDENCY_CACHE_SIZE",
        "ALIASROLL_LEASE_RETRY_PERIOD",
    ):
        assert expected in read
    # What the operator gives the serving pods is not one of its settings.
    assert "ALIASROLL_TRACK" not in read


def test_every_setting_the_operator_reads_is_in_the_settings_table() -> None:
    missing = sorted(settings_read() - settings_documented())
    assert missing == [], f"document these in the table of {SETTINGS.relative_to(REPO)}"


def test_the_settings_table_lists_only_settings_the_operator_reads() -> None:
    unread = sorted(settings_documented() - settings_read())
    assert unread == [], f"{SETTINGS.relative_to(REPO)} lists settings no code reads"


# --- troubleshooting: an entry per reason ------------------------------------------------------


def load(name: str, path: Path) -> ModuleType:
    """A module from its file (hack/ is no package; reasons.py needs nothing of the operator)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def reasons() -> set[str]:
    """Every value of reasons.py: condition types, condition reasons and event reasons."""
    module = load("reasons_for_docs", PACKAGE / "reasons.py")
    return {value for name, value in vars(module).items() if name.isupper() and isinstance(value, str)}


def entries() -> set[str]:
    return set(re.findall(r"^#{2,3} `(\w+)`$", TROUBLESHOOTING.read_text(), flags=re.MULTILINE))


def test_every_reason_has_a_troubleshooting_entry() -> None:
    assert {"Ready", "RolloutStalled", "RegistryWriteFailed"} <= reasons()
    missing = sorted(reasons() - entries())
    assert missing == [], f"give each a `### \\`Reason\\`` entry in {TROUBLESHOOTING.relative_to(REPO)}"


def test_troubleshooting_names_no_reason_that_is_gone() -> None:
    gone = sorted(entries() - reasons())
    assert gone == [], f"{TROUBLESHOOTING.relative_to(REPO)} has entries for reasons reasons.py lacks"


def test_each_reason_entry_says_what_it_means_and_what_to_do() -> None:
    text = TROUBLESHOOTING.read_text()
    for reason in reasons():
        found = re.search(rf"^### `{reason}`\n(.*?)(?=^##)", text + "\n##", flags=re.MULTILINE | re.DOTALL)
        if found is None:  # a condition type: its `## ` heading introduces its reasons
            continue
        assert "**Means:**" in found[1], reason
        assert "**Do:**" in found[1], reason


# --- the ModelDeployment reference, rendered from the CRD --------------------------------------


@functools.cache
def crd_reference() -> ModuleType:
    return load("crd_reference", REPO / "hack" / "docs" / "crd_reference.py")


def test_the_reference_page_is_rendered_at_build_time() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert "hack/docs/hooks.py" in config["hooks"]
    assert crd_reference().MARKER in REFERENCE.read_text()


def test_the_reference_has_every_field_of_the_crd_down_to_kubernetes_types() -> None:
    module = crd_reference()
    schema = module.version()["schema"]["openAPIV3Schema"]
    roots = module.kubernetes_types()
    rendered = module.fill(REFERENCE.read_text())
    paths = [field.path for field in module.fields(schema)]
    assert "spec.canary.steps[].duration" in paths
    assert "status.lastCanary.analysis.metrics[].verdict" in paths
    for path in paths:
        if path.split(".")[0] in ("spec", "status") and module.shown(path, roots):
            assert f"`{path}`" in rendered, path
    # spec's own rules (two fields, or the stored object) are listed under it.
    assert "spec.rollback cannot be removed once set" in rendered
    assert "spec.canary.alias must differ from spec.model.alias" in rendered
    # Kubernetes' own types are cut one level down: affinity's terms are the Pod's to document.
    assert "podAffinityTerm" not in rendered


def test_the_reference_escapes_what_markdown_would_read() -> None:
    module = crd_reference()
    assert module._escape("<name>-canary | a_b *c*") == "&lt;name&gt;-canary \\| a\\_b \\*c\\*"


# --- README: the front door --------------------------------------------------------------------


def test_the_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; the details belong in docs/"


def links(path: Path) -> list[str]:
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text())
        if not target.startswith(("http://", "https://", "#", "mailto:"))
    ]


def test_the_readme_links_the_docs() -> None:
    pages = {"docs/getting-started.md", "docs/troubleshooting.md", "docs/architecture.md"}
    assert pages <= set(links(README))


@pytest.mark.parametrize("target", links(README))
def test_every_link_of_the_readme_resolves(target: str) -> None:
    assert (REPO / target.partition("#")[0]).exists(), target
