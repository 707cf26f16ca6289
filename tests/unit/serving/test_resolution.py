"""What the model server installs before a version loads: which requirements the image lacks, what
of the resolution to install, and uv's settings (serving/resolution.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aliasroll.serving.resolution import (
    index_description,
    plan,
    to_install,
    uv_environment,
    with_hashes,
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


def test_index_never_shows_credentials() -> None:
    said = index_description({"PIP_INDEX_URL": "https://user:s3cret@mirror.example/simple"})
    assert said == "https://mirror.example/simple (PIP_INDEX_URL)"
    assert "pypi.org" in index_description({})


def test_pip_settings_reach_uv(tmp_path: Path) -> None:
    env = uv_environment(
        {
            "PIP_INDEX_URL": "http://mirror/simple",
            "PIP_CERT": "/etc/ca.pem",
            "HOME": "/scratch",
            "MLFLOW_TRACKING_TOKEN": "t0ken",
        },
        tmp_path,
    )
    assert env["UV_INDEX_URL"] == "http://mirror/simple"
    assert env["SSL_CERT_FILE"] == "/etc/ca.pem"
    assert env["UV_CACHE_DIR"] == str(tmp_path / "uv")
    # Review finding 3: the registry's token reached uv and whatever it ran.
    assert "MLFLOW_TRACKING_TOKEN" not in env
    assert "PIP_INDEX_URL" not in env, "carried over as uv's own; pip's are not uv's business"
    # uv's own setting wins over pip's.
    assert uv_environment({"UV_INDEX_URL": "a", "PIP_INDEX_URL": "b"}, tmp_path)["UV_INDEX_URL"] == "a"


def test_plan_keeps_the_models_constraints() -> None:
    steps = plan(["scikit-learn==1.9.1"], IMAGE, constraints=["numpy<2", "pandas>=3"])
    assert steps.model_constraints == ("numpy<2", "pandas>=3")
    pinned = {line.split("==")[0] for line in steps.constraints}
    assert "numpy" not in pinned, "the image's numpy breaks the model's constraint"
    assert "pandas" in pinned, "the image's pandas fits it"


def test_the_models_hashes_go_with_their_pins() -> None:
    hashes = {"scikit-learn": ("sha256:" + "a" * 64,)}
    assert with_hashes(["scikit-learn==1.9.1", "scipy==1.17.1"], hashes) == (
        "scikit-learn==1.9.1 --hash=sha256:" + "a" * 64,
        "scipy==1.17.1",
    )
