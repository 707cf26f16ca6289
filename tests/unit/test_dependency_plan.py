"""What the model server installs before a version loads: the pure decisions of serving/dependencies.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from aliasroll.serving.config import ConfigError, ServingConfig
from aliasroll.serving.dependencies import (
    index_description,
    plan,
    python_mismatch,
    read_environment,
    to_install,
    uv_environment,
)

IMAGE = {"numpy": "2.4.6", "pandas": "3.1.1", "mlflow-skinny": "3.17.2", "cloudpickle": "3.1.2"}


@pytest.mark.parametrize(
    ("requirements", "missing", "kept_out"),
    [
        pytest.param(["mlflow==3.17.2", "numpy==2.4.6", "pandas==3.1.1"], [], [], id="image-has-everything"),
        pytest.param(["mlflow==3.1.0"], [], [], id="mlflow-is-the-servers"),
        pytest.param(["numpy>=2"], [], [], id="range-the-image-satisfies"),
        pytest.param(
            ["numpy==2.4.6", "scikit-learn==1.9.1"], ["scikit-learn==1.9.1"], [], id="missing-package"
        ),
        pytest.param(
            ["cloudpickle==3.0.0"], ["cloudpickle==3.0.0"], ["cloudpickle"], id="pin-the-image-differs"
        ),
        pytest.param(['pywin32==306; sys_platform == "win32"'], [], [], id="marker-of-another-platform"),
        pytest.param(["./code/my.whl"], ["./code/my.whl"], [], id="path-left-to-uv"),
    ],
)
def test_plan(requirements: list[str], missing: list[str], kept_out: list[str]) -> None:
    steps = plan(requirements, IMAGE)
    assert list(steps.missing) == missing
    if missing:
        pinned = {line.split("==")[0] for line in steps.constraints}
        assert pinned == set(IMAGE) - set(kept_out)
    else:
        assert steps.constraints == ()


def test_to_install_skips_what_the_image_has_at_that_version() -> None:
    resolved = ["numpy==2.4.6", "scikit-learn==1.9.1", "scipy==1.17.1", "cloudpickle==3.0.0"]
    assert to_install(resolved, IMAGE) == ("cloudpickle==3.0.0", "scikit-learn==1.9.1", "scipy==1.17.1")


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


def test_index_never_shows_credentials() -> None:
    said = index_description({"PIP_INDEX_URL": "https://user:s3cret@mirror.example/simple"})
    assert said == "https://mirror.example/simple (PIP_INDEX_URL)"
    assert "pypi.org" in index_description({})


def test_pip_settings_reach_uv(tmp_path: Path) -> None:
    env = uv_environment(
        {"PIP_INDEX_URL": "http://mirror/simple", "PIP_CERT": "/etc/ca.pem", "HOME": "/scratch"}, tmp_path
    )
    assert env["UV_INDEX_URL"] == "http://mirror/simple"
    assert env["SSL_CERT_FILE"] == "/etc/ca.pem"
    assert env["UV_CACHE_DIR"] == str(tmp_path / "uv")
    # uv's own setting wins over pip's.
    assert uv_environment({"UV_INDEX_URL": "a", "PIP_INDEX_URL": "b"}, tmp_path)["UV_INDEX_URL"] == "a"


def test_dependencies_setting() -> None:
    base = {"MODEL_URI": "models:/m/1", "SCRATCH_DIR": "/s"}
    config = ServingConfig.from_env(base)
    assert (config.dependencies, config.dependency_cache) == ("install", Path("/s/dependencies"))
    config = ServingConfig.from_env(
        {**base, "ALIASROLL_DEPENDENCIES": "image", "ALIASROLL_DEPENDENCY_CACHE": "/c"}
    )
    assert (config.dependencies, config.dependency_cache) == ("image", Path("/c"))
    with pytest.raises(ConfigError, match="ALIASROLL_DEPENDENCIES='pip': use install"):
        ServingConfig.from_env({**base, "ALIASROLL_DEPENDENCIES": "pip"})
