"""The test tree itself: pytest imports test modules by their file name (rootdir-relative
"prepend" import mode), so two test files of one name in different folders fail the collection of
the whole run, and only where both tiers are collected together (`make test`, CI)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]


def test_every_test_module_has_a_name_of_its_own() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        where[path.name].append(path.relative_to(TESTS).as_posix())
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert shared == {}, "rename one of each: pytest cannot collect both"


def test_the_walk_finds_every_tier() -> None:
    tiers = {path.relative_to(TESTS).parts[0] for path in TESTS.rglob("test_*.py")}
    assert {"unit", "integration", "e2e", "e2e_real"} <= tiers
