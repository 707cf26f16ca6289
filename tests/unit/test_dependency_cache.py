"""The dependency cache a node's pods share (serving/dependencies.py): a hit yields exactly what the
miss that wrote it yielded, and only a resolution that comes out the same on every try is written.

uv is replaced by a stand-in for `subprocess.run` that answers what uv prints: its resolution on
stdout, or its errors on stderr with its exit status."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aliasroll.serving import dependencies
from aliasroll.serving.dependencies import (
    DependencyError,
    Installer,
    Plan,
    resolution_settings,
    to_install,
)

MODEL = "models:/m/4"
STEPS = Plan(missing=("mypkg==1.0", "scikit-learn==1.5.2"), constraints=("numpy==2.1.0",))
NO_SOLUTION = (
    "error: No solution found when resolving dependencies\n"
    "  cause: Because you require numpy==1.26.4 and numpy==2.1.0, we can conclude that your requirements"
    " are unsatisfiable."
)
UNREACHABLE = (
    "error: Request failed after 3 retries in 11.2s\n"
    "  cause: Failed to fetch: http://mirror.example/simple/mypkg/\n"
    "  cause: Connection refused (os error 111)"
)


class FakeUv:
    """Answers `uv pip compile` (constrained: with -c, or not) with what a test scripted, in order."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        if not self.answers:
            raise AssertionError(f"uv was not expected to run: {command}")
        code, text = self.answers.pop(0)
        return subprocess.CompletedProcess(
            command, code, text if code == 0 else "", "" if code == 0 else text
        )

    @property
    def constrained(self) -> list[bool]:
        return ["-c" in command for command in self.calls]


@pytest.fixture
def uv(monkeypatch: pytest.MonkeyPatch) -> FakeUv:
    fake = FakeUv()
    monkeypatch.setattr(dependencies, "_uv", lambda: "uv")
    monkeypatch.setattr(dependencies.subprocess, "run", fake)
    return fake


def _pod(cache: Path, env: dict[str, str] | None = None) -> Installer:
    return Installer(
        model_uri=MODEL, cache=cache, env=env or {"UV_INDEX_URL": "http://mirror.example/simple"}
    )


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("mypkg @ https://files.example/mypkg-1.0-py3-none-any.whl", id="review-10-direct-url"),
        pytest.param("mypkg @ git+https://git.example/org/mypkg@v1.0", id="git-url"),
        pytest.param('mypkg==1.0 ; python_full_version < "3.13"', id="marker"),
        pytest.param("mypkg==1.0", id="pin"),
    ],
)
def test_a_cache_hit_yields_what_the_miss_yielded(uv: FakeUv, tmp_path: Path, line: str) -> None:
    uv.answers = [(0, f"{line}\nscikit-learn==1.5.2\n")]
    first = _pod(tmp_path)._resolve(STEPS)
    assert first == [line, "scikit-learn==1.5.2"]
    second = _pod(tmp_path)._resolve(STEPS)  # another pod of the node: uv does not run
    assert second == first
    assert uv.constrained == [True]
    # The same set to install, so the same installed environment.
    assert to_install(second, {}) == to_install(first, {})


def test_a_transient_index_failure_caches_nothing(uv: FakeUv, tmp_path: Path) -> None:
    # Before: the constrained resolution failed on the network, the unconstrained one (a moment later)
    # worked and was kept under the constrained key for good, shadowing the image's packages.
    uv.answers = [(2, UNREACHABLE)]
    with pytest.raises(DependencyError, match="Request failed after 3 retries"):
        _pod(tmp_path)._resolve(STEPS)
    assert uv.constrained == [True]  # no unconstrained resolution after a failure to reach the index
    assert not list(tmp_path.glob("resolved/*"))
    uv.answers = [(0, "mypkg==1.0\nnumpy==2.1.0\nscikit-learn==1.5.2\n")]
    assert _pod(tmp_path)._resolve(STEPS) == ["mypkg==1.0", "numpy==2.1.0", "scikit-learn==1.5.2"]
    assert uv.constrained == [True, True]


def test_no_solution_with_the_image_s_versions_resolves_without_them_and_is_kept(
    uv: FakeUv, tmp_path: Path
) -> None:
    uv.answers = [(1, NO_SOLUTION), (0, "numpy==1.26.4\nscikit-learn==1.5.2\n")]
    resolved = _pod(tmp_path)._resolve(STEPS)
    assert resolved == ["numpy==1.26.4", "scikit-learn==1.5.2"]
    assert uv.constrained == [True, False]
    assert _pod(tmp_path)._resolve(STEPS) == resolved  # the same answer on every try: kept
    assert len(uv.calls) == 2


def test_another_index_resolves_anew_the_same_index_with_other_credentials_does_not(
    uv: FakeUv, tmp_path: Path
) -> None:
    first = {"UV_INDEX_URL": "https://alice:s3cret@mirror.example/simple"}
    uv.answers = [(0, "mypkg==1.0\n")]
    _pod(tmp_path, first)._resolve(STEPS)
    _pod(tmp_path, {"UV_INDEX_URL": "https://bob:other@mirror.example/simple"})._resolve(STEPS)
    assert len(uv.calls) == 1
    uv.answers = [(0, "mypkg==1.0+internal\n")]
    assert _pod(tmp_path, {"PIP_INDEX_URL": "https://internal.example/simple"})._resolve(STEPS) == [
        "mypkg==1.0+internal"
    ]
    assert len(uv.calls) == 2
    assert all("s3cret" not in path.name for path in tmp_path.rglob("*"))


def test_resolution_settings_name_the_index_without_credentials() -> None:
    assert resolution_settings({}) == ()
    assert resolution_settings(
        {"PIP_INDEX_URL": "https://u:p@a.example/simple", "UV_FIND_LINKS": "https://t0ken@b.example/w"}
    ) == ("UV_INDEX_URL=https://a.example/simple", "UV_FIND_LINKS=https://b.example/w")
    # uv's own setting wins over pip's, as uv_environment() passes them on.
    assert resolution_settings({"UV_INDEX_URL": "http://a/simple", "PIP_INDEX_URL": "http://b/simple"}) == (
        "UV_INDEX_URL=http://a/simple",
    )


def test_an_entry_of_the_first_format_is_not_read(uv: FakeUv, tmp_path: Path) -> None:
    # Format 1 keyed a resolution by the requirements and the image only; its entries may hold an
    # unconstrained resolution written after a network failure.
    digest = hashlib.sha256(f"{sys.version_info[:2]} {platform.machine()} {sys.platform}\n".encode())
    for part in (STEPS.missing, STEPS.constraints):
        digest.update("\n".join(part).encode() + b"\n--\n")
    old = tmp_path / "resolved" / f"{digest.hexdigest()[:32]}.txt"
    old.parent.mkdir(parents=True)
    old.write_text("numpy==1.26.4\nmypkg==1.0\n")
    uv.answers = [(0, "mypkg==1.0\n")]
    assert _pod(tmp_path)._resolve(STEPS) == ["mypkg==1.0"]
    assert uv.constrained == [True]
