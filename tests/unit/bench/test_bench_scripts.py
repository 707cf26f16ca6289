"""bench/: every script imports and answers --help; the helpers they share (bench/common.py) give the
figures their tables print; no script keeps a copy of them, and every `main` reads as named steps."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench"
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if path.name != "common.py")
SHARED = ("percentile", "nearest_rank", "verdict", "prelude", "argument_parser")
MAIN_LINES = 60


def load_common() -> ModuleType:
    # Under a name of its own: "common" is nobody's top-level module in this test session.
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_common()


def test_the_scripts_are_found() -> None:
    names = {path.stem for path in SCRIPTS}
    assert {"rollout_latency", "failover", "scale", "serving", "canary_promotion", "hostile_tenants"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_each_script_imports_and_shows_its_help(script: Path) -> None:
    # A process of its own: a script's prelude puts folders on sys.path and sets MLflow's environment.
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: "), done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_no_script_keeps_its_own_copy_of_a_shared_helper(script: Path) -> None:
    tree = ast.parse(script.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert not defined & {*SHARED, "_percentile"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_each_main_is_under_60_lines(script: Path) -> None:
    tree = ast.parse(script.read_text())
    (main,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert main.end_lineno is not None
    assert main.end_lineno - main.lineno + 1 < MAIN_LINES


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([7.0], 0.5, 7.0),
        ([7.0], 0.95, 7.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),  # sorted first
        ([1.0, 2.0, 3.0, 4.0], 0.5, 3.0),  # index 1.5 rounds to 2 (round half to even)
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 1.0, 5.0),
        ([float(n) for n in range(1, 21)], 0.95, 19.0),  # index 18.05 -> 18
        ([float(n) for n in range(1, 21)], 0.5, 11.0),  # index 9.5 rounds to 10 (even)
    ],
)
def test_percentile_picks_the_rounded_index_of_the_sorted_values(
    values: list[float], fraction: float, expected: float
) -> None:
    assert common.percentile(values, fraction) == expected


def test_percentile_leaves_its_argument_alone() -> None:
    values = [3.0, 1.0, 2.0]
    common.percentile(values, 0.5)
    assert values == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(50, 5.0), (99, 10.0), (100, 10.0), (10, 1.0), (11, 2.0), (0, 1.0)],
)
def test_nearest_rank_of_an_ascending_list(percent: float, expected: float) -> None:
    assert common.nearest_rank([float(n) for n in range(1, 11)], percent) == expected


def test_verdict() -> None:
    assert common.verdict(True) == "met"
    assert common.verdict(False) == "NOT met"
    assert common.verdict(False, "MISSED") == "MISSED"


def test_prelude_puts_the_folders_first_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/elsewhere"])
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    common.prelude("localenv", "tests/e2e", "", quiet_mlflow=False)
    assert sys.path == [str(REPO / "localenv"), str(REPO / "tests" / "e2e"), str(REPO), "/elsewhere"]
    assert "MLFLOW_LOGGING_LEVEL" not in os.environ
    common.prelude()
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"


def test_argument_parser_keeps_the_docstring_as_written() -> None:
    parser = common.argument_parser("first line\n\n  indented line")
    assert "  indented line" in parser.format_help()
