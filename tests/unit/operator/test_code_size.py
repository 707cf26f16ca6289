"""The operator's long functions and long modules, kept visible until they are split (issue 22).

The test prints every function of operator/aliasroll over 60 lines and every module over 400 lines
(`pytest -s` or `-rP` shows them) and fails only when there are more of them than today: a new long
function or module fails it, the existing ones wait to be split. When one is split, lower the
count below with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "operator" / "aliasroll"
FUNCTION_LINES = 60
MODULE_LINES = 400

# Counted on 2026-12-07 (main at 4e7cbe5): 13 functions over 60 lines (planner `_status` 116 and
# `plan` 98, `Reconciler._reconcile` 94, `OperatorConfig.from_env` 84, `Runtime.__init__` 83, ...)
# and 12 modules over 400 lines (serving/dependencies.py 1009, kube/cache.py 843, spec.py 715, ...).
# Since then split into named steps: the planner's `plan` and `_status`, `Reconciler._reconcile`,
# `Runtime.__init__` (controller/runtime.py), `rollout_conditions`, `judge`, `deployment`,
# `parse_spec` and `parse_serving`, both `from_env`, `webhook_app` and `PrometheusProvider.measure`:
# none is left, so a function over 60 lines now fails. And into modules named for what they hold:
# spec.py (the package spec/), serving/dependencies.py (requirements.py, resolution.py,
# dependency_cache.py, the Installer left in dependencies.py) and kube/cache.py's projections
# (kube/projection.py; cache.py keeps the informers, 499 lines).
LONG_FUNCTIONS_TODAY = 0
LONG_MODULES_TODAY = 10


def long_functions() -> list[tuple[str, str, int]]:
    """(module, qualified name, lines) of every function, method or nested function over the limit,
    from its `def` line to its last line (decorators left out)."""
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    lines = child.end_lineno - child.lineno + 1
                    if lines > FUNCTION_LINES:
                        found.append((module, name, lines))
                visit(child, module, f"{name}.")
            else:
                visit(child, module, prefix)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text()), path.relative_to(PACKAGE).as_posix(), "")
    return sorted(found, key=lambda item: -item[2])


def long_modules() -> list[tuple[str, int]]:
    counted = [
        (path.relative_to(PACKAGE).as_posix(), len(path.read_text().splitlines()))
        for path in PACKAGE.rglob("*.py")
    ]
    return sorted(((module, lines) for module, lines in counted if lines > MODULE_LINES), key=lambda m: -m[1])


def test_the_long_functions_and_modules_do_not_grow_in_number() -> None:
    functions, modules = long_functions(), long_modules()
    print(f"\nfunctions of operator/aliasroll over {FUNCTION_LINES} lines: {len(functions)}")
    for module, name, lines in functions:
        print(f"  {lines:5}  {module}  {name}")
    print(f"modules of operator/aliasroll over {MODULE_LINES} lines: {len(modules)}")
    for module, lines in modules:
        print(f"  {lines:5}  {module}")
    assert len(functions) <= LONG_FUNCTIONS_TODAY, (
        f"{len(functions)} functions over {FUNCTION_LINES} lines, {LONG_FUNCTIONS_TODAY} before: "
        "split the new one into named steps"
    )
    assert len(modules) <= LONG_MODULES_TODAY, (
        f"{len(modules)} modules over {MODULE_LINES} lines, {LONG_MODULES_TODAY} before: split the new one"
    )


def test_the_walk_reads_the_package() -> None:
    # A moved package would leave nothing to count, and the test above would pass on nothing.
    assert (PACKAGE / "planning" / "planner.py").is_file()
    assert len(list(PACKAGE.rglob("*.py"))) > 20
