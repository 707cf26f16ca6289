"""The install a user writes for a list of namespaces, in a folder of the test's own.

examples/install-namespaced/ is the folder users copy (for the namespace `ml-serving`); this writes the
same kustomizations for the namespaces a test names, so no file of the repository is edited and the
install the tests apply is the one the example shows (tests/unit/artifacts/test_manifests.py checks that this
writes exactly the example for `ml-serving`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
ARGS = "/spec/template/spec/containers/0/args/-"  # the operator container's arguments


def _relative(target: Path, folder: Path) -> str:
    return os.path.relpath(target, folder)  # kustomize refuses absolute paths


def namespaced_kustomizations(
    folder: Path, namespaces: Sequence[str], *, name_prefix: str | None = None
) -> dict[Path, dict[str, Any]]:
    """Each kustomization.yaml of the namespaced install in `folder` (path -> content)."""
    top: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [_relative(MANIFESTS, folder), *namespaces],
        "components": [_relative(MANIFESTS / "namespaced", folder)],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": "aliasroll"},
                "patch": "\n".join(
                    f"- {{op: add, path: {ARGS}, value: --namespace={ns}}}" for ns in namespaces
                ),
            }
        ],
    }
    if name_prefix:
        top["namePrefix"] = name_prefix
    files = {folder / "kustomization.yaml": top}
    for namespace in namespaces:
        files[folder / namespace / "kustomization.yaml"] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": namespace,
            "resources": [_relative(MANIFESTS / "namespaced" / "watched-namespace", folder / namespace)],
        }
    return files


def write_namespaced_install(
    folder: Path, namespaces: Sequence[str], *, name_prefix: str | None = None
) -> Path:
    """Writes the install for `namespaces` into `folder`; `kubectl apply -k folder` applies it."""
    for path, content in namespaced_kustomizations(folder, namespaces, name_prefix=name_prefix).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return folder
