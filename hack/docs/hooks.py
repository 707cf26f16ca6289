"""MkDocs hooks (mkdocs.yml `hooks:`): the ModelDeployment reference is rendered from the CRD at build."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crd_reference", _HERE / "crd_reference.py")
assert _spec is not None
assert _spec.loader is not None
crd_reference = importlib.util.module_from_spec(_spec)
sys.modules["crd_reference"] = crd_reference
_spec.loader.exec_module(crd_reference)

REFERENCE_PAGE = "reference/modeldeployment.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """The reference page's marker becomes the tables rendered from crds/ (no committed copy to drift)."""
    if page.file.src_uri == REFERENCE_PAGE:
        return str(crd_reference.fill(markdown))
    return markdown
