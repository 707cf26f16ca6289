"""The model server installs what a version logged beyond the image, before /ready.

Against a real MLflow registry and a package index on loopback (an air-gapped cluster's mirror);
the server started as the image starts it. Covers: a scikit-learn model the image (here, the test
environment) already satisfies installs nothing; a pyfunc importing a package the image lacks gets
the pinned version from the index; a second server with the same cache and index neither resolves nor
downloads, and one of another index resolves anew; nothing is written into an installed set after
the install (no bytecode), and a set changed since is installed again; a requirement the index lacks, a
direct URL the operator does not allow and a Python of another minor each end the process with exit 1
and a termination message naming what failed in the server's words (never the model's lines).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from aliasroll.serving.dependency_cache import verify_manifest
from mlflowserver import MlflowServer
from support.package_index import PackageIndex, make_wheel
from support.served import ServedProcess

PROBE_MODEL = Path(__file__).parent / "models" / "probe_model.py"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    wheels = tmp_path_factory.mktemp("wheels")
    files = [
        make_wheel(wheels, "aliasroll-probe", version, f'VERSION = "{version}"\n')
        for version in ("1.0", "2.0")
    ]
    served = PackageIndex(tmp_path_factory.mktemp("index"), files).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-deps")


def _log_probe(tracking_uri: str, name: str, *, python: str | None = None, **environment: object) -> str:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    if python is not None:
        return _log_under_python(name, python)
    # No input example: MLflow would load the model here, where aliasroll-probe is not installed.
    with mlflow.start_run(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PROBE_MODEL),
            signature=infer_signature(pd.DataFrame({"x": ["a"]}), ["1.0:a"]),
            registered_model_name=name,
            **environment,  # type: ignore[arg-type]
        )
    return f"models:/{name}/{info.registered_model_version}"


def _log_under_python(name: str, python: str) -> str:
    """A version MLflow recorded as logged under `python` (as if logged from another interpreter)."""
    import tempfile

    import mlflow
    import yaml

    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        local = Path(directory, "model")
        mlflow.pyfunc.save_model(
            str(local), python_model=str(PROBE_MODEL), pip_requirements=["mlflow-skinny"]
        )
        env_file = local / "python_env.yaml"
        env_file.write_text(yaml.safe_dump({**yaml.safe_load(env_file.read_text()), "python": python}))
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(local), "model")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    return f"models:/{name}/{version}"


@pytest.fixture(scope="module")
def probe_uri(mlflow_server: MlflowServer) -> str:
    # Pinned to 1.0 though the index has 2.0: the recorded pin is what the server installs.
    return _log_probe(mlflow_server.url, "probe", pip_requirements=["mlflow-skinny", "aliasroll-probe==1.0"])


def _serve(uri: str, mlflow_server: MlflowServer, workdir: Path, **env: str) -> ServedProcess:
    return ServedProcess(model_uri=uri, tracking_uri=mlflow_server.url, workdir=workdir, env=env).start()


def test_sklearn_model_the_image_satisfies_installs_nothing(
    mlflow_server: MlflowServer, workdir: Path, index: PackageIndex
) -> None:
    import mlflow
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegression

    features = np.array([[0.0], [1.0], [2.0], [3.0]])
    mlflow.set_tracking_uri(mlflow_server.url)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(features, [0, 0, 1, 1]),
            name="model",
            input_example=features[:1],
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"],
            registered_model_name="deps-sklearn",
        )
    uri = f"models:/deps-sklearn/{info.registered_model_version}"
    server = _serve(uri, mlflow_server, workdir, UV_INDEX_URL=index.url())
    try:
        server.wait_until("/ready")
        answer = server.post({"inputs": [[0.2], [2.8]]})
        expected = mlflow.pyfunc.load_model(uri).predict(np.array([[0.2], [2.8]])).tolist()
        assert answer.json() == {"predictions": expected}
        assert "the image has every requirement" in server.log()
    finally:
        server.stop()


def test_a_package_the_image_lacks_is_installed_at_its_pinned_version(
    probe_uri: str, mlflow_server: MlflowServer, workdir: Path, index: PackageIndex, tmp_path: Path
) -> None:
    cache = tmp_path / "node-cache"
    first = _serve(
        probe_uri,
        mlflow_server,
        workdir,
        UV_INDEX_URL=index.url(),
        ALIASROLL_DEPENDENCY_CACHE=str(cache),
        PYTHONDONTWRITEBYTECODE="1",  # as the image sets it
    )
    try:
        first.wait_until("/ready")
        assert first.post({"dataframe_records": [{"x": "a"}]}).json() == {"predictions": ["1.0:a"]}
        assert "installed 1 package(s)" in first.log()
        assert set(index.downloads) == {"/files/aliasroll_probe-1.0-py3-none-any.whl"}
        asked = len(index.requests)
    finally:
        first.stop()
    # Nothing was written into the set after uv installed it (review finding 2: a .pyc another pod
    # imports is code nobody checked): its files are the manifest's.
    (installed,) = cache.glob("envs/*/.manifest")
    assert not list(cache.glob("envs/*/aliasroll_probe/__pycache__"))
    assert verify_manifest(installed.parent) is None
    # A second pod of the node: the cache has the resolution and the packages; the index is not asked,
    # neither a project page nor a file.
    second = _serve(
        probe_uri,
        mlflow_server,
        workdir,
        UV_INDEX_URL=index.url(),
        ALIASROLL_DEPENDENCY_CACHE=str(cache),
    )
    try:
        second.wait_until("/ready")
        assert second.post({"dataframe_records": [{"x": "b"}]}).json() == {"predictions": ["1.0:b"]}
        assert "found in the cache" in second.log()
        assert len(index.requests) == asked
    finally:
        second.stop()
    # A set changed after its install is not imported: installed again from the index.
    module = installed.parent / "aliasroll_probe" / "__init__.py"
    module.write_text('VERSION = "planted"\n')
    changed = _serve(
        probe_uri,
        mlflow_server,
        workdir,
        UV_INDEX_URL=index.url(),
        ALIASROLL_DEPENDENCY_CACHE=str(cache),
    )
    try:
        changed.wait_until("/ready")
        assert changed.post({"dataframe_records": [{"x": "c"}]}).json() == {"predictions": ["1.0:c"]}
        assert "does not match its manifest" in changed.log()
    finally:
        changed.stop()
    # Another index can resolve otherwise: a pod installing from it does not take this resolution.
    third = _serve(
        probe_uri,
        mlflow_server,
        workdir,
        UV_INDEX_URL="http://127.0.0.1:9/simple",
        UV_HTTP_RETRIES="0",
        ALIASROLL_DEPENDENCY_CACHE=str(cache),
    )
    try:
        assert third.wait_exit() == 1
        assert "127.0.0.1:9" in third.log()
    finally:
        third.stop()


def test_dependencies_image_installs_nothing(
    probe_uri: str, mlflow_server: MlflowServer, workdir: Path, index: PackageIndex
) -> None:
    server = _serve(
        probe_uri, mlflow_server, workdir, UV_INDEX_URL=index.url(), ALIASROLL_DEPENDENCIES="image"
    )
    try:
        assert server.wait_exit() == 1
        assert "No module named 'aliasroll_probe'" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("case", "environment", "expected"),
    [
        pytest.param(
            "missing",
            {"pip_requirements": ["mlflow-skinny", "aliasroll-nonexistent==1.0"]},
            ["cannot install aliasroll-nonexistent==1.0", "(UV_INDEX_URL)"],
            id="requirement-the-index-lacks",
        ),
        pytest.param(
            "direct",
            {
                "pip_requirements": [
                    "mlflow-skinny",
                    "evil @ https://attacker.example/evil-1.0-py3-none-any.whl",
                ]
            },
            ["evil: a direct reference", "ALIASROLL_DEPENDENCY_DIRECT_REFERENCES"],
            id="review-8-a-direct-url-the-operator-does-not-allow",
        ),
        pytest.param(
            "python",
            {"python": "3.9.18"},
            ["logged under Python 3.9.18", f"runs Python {sys.version_info.major}.{sys.version_info.minor}"],
            id="python-of-another-minor",
        ),
    ],
)
def test_an_environment_that_cannot_be_honoured_exits_1_with_a_termination_message(
    mlflow_server: MlflowServer,
    workdir: Path,
    index: PackageIndex,
    tmp_path: Path,
    case: str,
    environment: dict[str, object],
    expected: list[str],
) -> None:
    uri = _log_probe(mlflow_server.url, f"deps-{case}", **environment)
    termination = tmp_path / "termination-log"
    server = _serve(
        uri, mlflow_server, workdir, UV_INDEX_URL=index.url(), TERMINATION_MESSAGE_PATH=str(termination)
    )
    try:
        assert server.wait_exit() == 1
        message = termination.read_text()
        for part in expected:
            assert part in message, server.log()
        if case == "missing":
            assert index.url() in message
        assert "attacker.example" not in message
        assert "Because" not in message, "uv's own words stay in the log"
    finally:
        server.stop()
