"""Models that need more than the serving image has, served from the unchanged image on the real node.

The pods cannot reach the internet: they install from a package index served on the host and
bridged into the node's network (as an air-gapped cluster's mirror), made from a wheelhouse that
`pip download` fills on the host once (cached under ~/.cache/aliasroll/wheelhouse).
Covers: a scikit-learn model logged with mlflow.sklearn.log_model, and a pyfunc importing a package
the image lacks, answer as mlflow.pyfunc.load_model(...).predict does on the host; a requirement the
index lacks and a Python of another minor each stall the rollout with the pods' message in status
while the previous version answers every request.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from harness import available_at, condition, wait_for
from realstack import NAME, RealStack

from localkube import RealNode
from support.package_index import NoPip, PackageIndex, make_wheel, wheelhouse

REPO = Path(__file__).resolve().parents[2]
PROBE_MODEL = REPO / "tests" / "integration" / "models" / "probe_model.py"
WHEELHOUSE = Path.home() / ".cache" / "aliasroll" / "wheelhouse"
FEATURES = [[0.1, 1.0], [2.5, -1.0], [3.0, 0.5]]


def _sklearn_model_dir(directory: Path) -> Path:
    """The scikit-learn model as the tests log it (saved locally first, for its requirements)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    model = LogisticRegression().fit(features, [0, 0, 1, 1])
    local = directory / "sklearn-model"
    mlflow.sklearn.save_model(model, str(local), input_example=features[:1])
    return local


def _wheelhouse(requirements: list[str]) -> Path:
    """Downloaded from the package registries once per set."""
    try:
        return wheelhouse(WHEELHOUSE, requirements, REPO / "serving-image" / "requirements.txt")
    except NoPip as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-dependencies")


@pytest.fixture(scope="module")
def sklearn_dir(workdir: Path) -> Path:
    return _sklearn_model_dir(workdir)


@pytest.fixture(scope="module")
def served(sklearn_dir: Path, workdir: Path) -> Iterator[PackageIndex]:
    logged = (sklearn_dir / "requirements.txt").read_text().split()
    house = _wheelhouse([line for line in logged if not line.startswith("mlflow")])
    probe = make_wheel(workdir / "probe", "aliasroll-probe", "1.0", 'VERSION = "1.0"\n')
    index = PackageIndex(workdir / "index", [*house.glob("*.whl"), probe]).start()
    yield index
    index.stop()


@pytest.fixture(scope="module")
def index(node: RealNode, served: PackageIndex) -> str:
    """The index URL as the pods see it."""
    address, port = node.expose_host_port(served.port)
    return f"http://{address}:{port}/simple"


def _predict(stack: RealStack, body: dict[str, Any]) -> tuple[Any, str]:
    client = (
        "import http.client, json, sys\n"
        f"c = http.client.HTTPConnection({stack.address!r}, 80, timeout=10)\n"
        "c.request('POST', '/invocations', body=sys.argv[1], headers={'Content-Type': 'application/json'})\n"
        "r = c.getresponse()\n"
        "answer = {'status': r.status, 'version': r.getheader('X-Model-Version'),"
        " 'body': r.read().decode()}\n"
        "print(json.dumps(answer))\n"
    )
    out = json.loads(stack.node.run(sys.executable, "-c", client, json.dumps(body)).stdout)
    assert out["status"] == 200, out
    return json.loads(out["body"])["predictions"], str(out["version"])


def _log_probe(stack: RealStack, *, requirements: list[str], python: str | None = None) -> str:
    """A version of the probe pyfunc (imports aliasroll-probe) with these requirements and Python."""
    mlflow.set_tracking_uri(stack.mlflow.url)
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        local = Path(directory, "model")
        mlflow.pyfunc.save_model(str(local), python_model=str(PROBE_MODEL), pip_requirements=requirements)
        if python is not None:
            env_file = local / "python_env.yaml"
            env_file.write_text(yaml.safe_dump({**yaml.safe_load(env_file.read_text()), "python": python}))
        return _register(stack, local)


def _register(stack: RealStack, local: Path) -> str:
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(local), "model")
    return str(mlflow.register_model(f"runs:/{run.info.run_id}/model", stack.model).version)


def test_models_the_image_lacks_packages_for_serve_from_the_unchanged_image(
    stack: RealStack, index: str, served: PackageIndex, sklearn_dir: Path
) -> None:
    mlflow.set_tracking_uri(stack.mlflow.url)
    sklearn_version = _register(stack, sklearn_dir)
    stack.point("production", sklearn_version)
    # The operator's cache (a node directory: tests/e2e_real/conftest.py), which the resource asks for.
    manifest = stack.deploy(
        replicas=1,
        serving={
            "image": stack.image,
            "podTemplate": {"spec": stack.placement},
            "env": [{"name": "UV_INDEX_URL", "value": index}],
            "dependencyCache": {"enabled": True},
        },
    )
    stack.ready(sklearn_version, timeout=400)
    asked = len(served.requests)
    assert any("scikit_learn" in path for path in served.downloads), served.downloads

    # A second pod of the version on the node: it neither resolves nor downloads.
    manifest["spec"]["replicas"] = 2
    stack.apply(manifest)
    wait_for(
        lambda: available_at(stack.kube, stack.namespace, f"{NAME}-production", sklearn_version),
        timeout=240,
        what="2 pods of the scikit-learn version available",
    )
    assert served.requests[asked:] == []
    manifest["spec"]["replicas"] = 1
    stack.apply(manifest)
    import numpy as np

    expected = mlflow.pyfunc.load_model(f"models:/{stack.model}/{sklearn_version}").predict(
        np.array(FEATURES)
    )
    predictions, version = _predict(stack, {"inputs": FEATURES})
    assert version == sklearn_version
    assert predictions == expected.tolist()

    probe_version = _log_probe(stack, requirements=["mlflow-skinny", "aliasroll-probe==1.0"])
    stack.point("production", probe_version)
    stack.ready(probe_version, timeout=400)
    stack.old_pods_gone()

    def answered_by_probe() -> bool:
        try:
            return _predict(stack, {"dataframe_records": [{"x": "a"}]})[1] == probe_version
        except AssertionError:  # the scikit-learn version, leaving the endpoints, refuses this input
            return False

    wait_for(answered_by_probe, timeout=60, what=f"answers from {probe_version}")
    assert _predict(stack, {"dataframe_records": [{"x": "a"}, {"x": "b"}]})[0] == ["1.0:a", "1.0:b"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param(
            "missing",
            ["aliasroll-nonexistent==1.0", "/simple (UV_INDEX_URL)"],
            id="requirement-the-index-lacks",
        ),
        pytest.param("python", ["logged under Python 3.9.18"], id="python-of-another-minor"),
    ],
)
def test_an_environment_that_cannot_be_honoured_stalls_while_the_previous_version_serves(
    stack: RealStack, index: str, case: str, expected: list[str]
) -> None:
    v1 = stack.register("v1", alias="production")
    stack.deploy(
        serving={
            "image": stack.image,
            "podTemplate": {"spec": stack.placement},
            "env": [{"name": "UV_INDEX_URL", "value": index}],
        }
    )
    stack.ready(v1)
    if case == "missing":
        broken = _log_probe(stack, requirements=["mlflow-skinny", "aliasroll-nonexistent==1.0"])
    else:
        broken = _log_probe(stack, requirements=["mlflow-skinny", "aliasroll-probe==1.0"], python="3.9.18")

    def stalled() -> dict[str, Any] | None:
        # On a loaded machine the progress deadline can pass before the pod has resolved and
        # failed: the stall shows first, the pod's termination message joins it when it exits.
        found = stack.resource()
        if condition(found, "Ready") != ("False", "RolloutStalled"):
            return None
        message = next(c["message"] for c in found["status"]["conditions"] if c["type"] == "Ready")
        return found if "exited with code 1" in message else None

    with stack.load(f"broken-{case}", rate=60) as load:
        load.running()
        stack.point("production", broken)
        resource = wait_for(stalled, timeout=240, what="Ready=False/RolloutStalled naming the pod's exit")
    answers = load.answers()
    assert all(a["status"] == 200 and a["version"] == v1 for a in answers), Counter(
        (a["status"], a.get("version")) for a in answers
    )
    message = next(c["message"] for c in resource["status"]["conditions"] if c["type"] == "Ready")
    for part in expected:
        assert part in message, message
    assert "exited with code 1" in message
