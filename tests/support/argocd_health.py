"""The Argo CD health check (manifests/argocd/health.lua) as Argo CD runs it, in lupa's Lua 5.1: the
script, its test table (health_test.yaml and testdata/), and `run_health`. Shared by the unit test that
runs the table (tests/unit/artifacts/test_argocd_health.py) and the end-to-end test that captures it
(tests/e2e/test_argocd_health_e2e.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # lupa >= 2.0 bundles Lua 5.1 as its own module
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "manifests" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
# Argo CD's layout for a health check's tests: the table, and the objects it names, beside the script.
HEALTH_TESTS = ARGOCD / "health_test.yaml"
TESTDATA = ARGOCD / "testdata"


def to_lua(runtime: Any, value: Any) -> Any:
    """A Python value as Argo CD hands JSON to Lua: objects and arrays as tables, null as nothing."""
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(runtime, item)
        return table
    return value


# Argo CD opens only the base, table, package and (a safe) os library for a script of argocd-cm
# (util/lua/lua.go, unless resource.customizations.useOpenLibs is set): no string library, not even as
# methods of strings. lupa opens them all; these go before the script runs.
ARGO_CD_LIBRARIES_ONLY = """
debug.setmetatable("", nil)
string, math, io, coroutine, debug = nil, nil, nil, nil, nil
"""


def run_health(obj: dict[str, Any], script: str = SCRIPT) -> tuple[str, str]:
    runtime = lua51.LuaRuntime()
    runtime.execute(ARGO_CD_LIBRARIES_ONLY)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script)
    return str(result["status"]), str(result["message"])


def health_tests() -> list[dict[str, Any]]:
    """health_test.yaml's `tests`: [{healthStatus: {status, message}, inputPath}], as Argo CD reads it."""
    if not HEALTH_TESTS.exists():
        return []
    tests: list[dict[str, Any]] = yaml.safe_load(HEALTH_TESTS.read_text())["tests"]
    return tests
