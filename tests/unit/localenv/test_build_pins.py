"""Every pinned Go wrapper module under localenv/go is complete and used by localenv/build.sh.

A module without go.sum cannot build with -mod=readonly, a package missing from tools.go is dropped
by `go mod tidy`, and a module build.sh never names is a pin nobody builds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LOCALENV = Path(__file__).resolve().parents[3] / "localenv"
BUILD_SH = LOCALENV / "build.sh"
MODULES = sorted(p for p in (LOCALENV / "go").iterdir() if p.is_dir())


def build_calls() -> list[tuple[str, str, list[str], list[str]]]:
    """(group, module, binaries, packages) of each `build` call in build.sh."""
    text = BUILD_SH.read_text().replace("\\\n", " ")  # join continued lines
    calls = []
    for m in re.finditer(r'^\s*build (\S+) (\S+) "([^"]*)"\s+"([^"]*)"', text, re.MULTILINE):
        group, module, bins, pkgs = m.groups()
        calls.append((group, module, bins.split(), pkgs.split()))
    return calls


def tools_imports(module: Path) -> set[str]:
    text = "\n".join(p.read_text() for p in module.glob("*.go"))
    return set(re.findall(r'_ "([^"]+)"', text))


def test_modules_and_calls_exist() -> None:
    assert {m.name for m in MODULES} >= {"kube", "etcd", "kwok", "containerd", "cni", "coredns"}
    assert len(build_calls()) >= 8


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_is_pinned_and_built(module: Path) -> None:
    assert (module / "go.mod").is_file(), f"{module}/go.mod missing"
    assert (module / "go.sum").is_file(), f"{module}/go.sum missing: run go mod tidy in {module}"
    assert tools_imports(module), f"{module} has no tools.go importing what it builds"
    text = BUILD_SH.read_text()
    named = f'"$here/go/{module.name}"' in text or any(mod == module.name for _, mod, _, _ in build_calls())
    assert named, f"localenv/build.sh never builds or reads localenv/go/{module.name}"


@pytest.mark.parametrize("call", build_calls(), ids=lambda c: c[0])
def test_build_call_packages_are_pinned(call: tuple[str, str, list[str], list[str]]) -> None:
    group, module, bins, pkgs = call
    assert (LOCALENV / "go" / module).is_dir(), f"build {group}: no module localenv/go/{module}"
    assert bins, f"build {group}: no binaries listed"
    assert pkgs, f"build {group}: no packages listed"
    # A wrapper module may build its own main package (coredns: a main of chosen plugins); what
    # that imports is then the pin.
    own = module_path(module)
    missing = {p for p in pkgs if p != own and not p.startswith(own + "/")} - tools_imports(
        LOCALENV / "go" / module
    )
    assert not missing, f"build {group}: {sorted(missing)} not imported by localenv/go/{module}/tools.go"


def module_path(module: str) -> str:
    match = re.search(r"^module (\S+)$", (LOCALENV / "go" / module / "go.mod").read_text(), re.MULTILINE)
    assert match, f"localenv/go/{module}/go.mod names no module"
    return match.group(1)


def go_mod(module: str) -> tuple[dict[str, str], list[str]]:
    """(required module -> version, replace lines) of a wrapper module's go.mod."""
    text = (LOCALENV / "go" / module / "go.mod").read_text()
    requires = dict(re.findall(r"^(?:require |\t)(\S+) (v\S+)(?: // indirect)?$", text, re.MULTILINE))
    replaces = sorted(line.strip() for line in text.splitlines() if "=>" in line)
    return requires, replaces


def test_node_kubernetes_is_the_control_planes() -> None:
    """kubelet and kube-proxy (kube-node) are the same Kubernetes, staging modules and dependency
    versions as the control plane (kube); they are separate modules only to keep kube's cache key."""
    kube, kube_replaces = go_mod("kube")
    node, node_replaces = go_mod("kube-node")
    assert node["k8s.io/kubernetes"] == kube["k8s.io/kubernetes"]
    assert node_replaces == kube_replaces
    differ = {m: (kube[m], node[m]) for m in kube.keys() & node.keys() if kube[m] != node[m]}
    assert not differ, f"kube and kube-node select different versions: {differ}"


def test_groups_are_unique() -> None:
    groups = [group for group, _, _, _ in build_calls()]
    assert len(groups) == len(set(groups)), "two build calls share a cache group"
