"""Benchmark: cold start of a model that needs packages the serving image lacks.

A scikit-learn model (mlflow.sklearn.log_model) registered on a real mlflow server; packages come
from a package index on loopback (a wheelhouse `pip download` fills once, cached under
~/.cache/aliasroll/wheelhouse), as an air-gapped cluster's mirror. Spawn -> first successful
prediction, for:
  aliasroll, cold cache   the serving image's environment (a venv of serving-image/requirements.txt)
                          with an empty dependency cache and an empty uv cache
  aliasroll, warm cache   the same, a second pod of the node: the dependency cache is kept
  aliasroll, no install   the same model from a custom image that has its requirements
                          (dependencies: image: the floor), and a model the image has all of
  mlflow models serve --env-manager uv / virtualenv, each with empty environment and package caches
Goals (issue 13): cold <= 0.5x the fastest peer; warm within 1 s of the no-install model.

    make bench-dependencies     # or: .venv/bin/python bench/dependencies.py --servers aliasroll
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "localenv"), str(REPO), str(REPO / "tests")]

from serving import first_prediction, stop_group  # noqa: E402

from mlflowserver import MlflowServer, free_port  # noqa: E402
from support.package_index import PackageIndex  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aliasroll"
UV = CACHE / "tools" / "uv-0.13.8" / "bin" / "uv"
IMAGE_REQUIREMENTS = REPO / "serving-image" / "requirements.txt"
BODY_ROWS = [[0.5, 1.0]]


def image_venv() -> Path:
    """The serving image's Python environment, made once per requirements.txt (uv's cache)."""
    key = hashlib.sha256(IMAGE_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = CACHE / "bench" / f"serving-image-{key}-compiled"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            [
                str(UV),
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",  # as the image's build does
                "--python",
                str(venv / "bin" / "python"),
                "-r",
                str(IMAGE_REQUIREMENTS),
            ],
            check=True,
        )
        (venv / ".complete").write_text("")
    return venv


def custom_image_venv(requirements: list[str]) -> Path:
    """The serving image with the model's requirements built in: what `dependencies: image` serves
    from, the floor a warm cache is measured against."""
    base = image_venv()
    key = hashlib.sha256("\n".join([base.name, *sorted(requirements)]).encode()).hexdigest()[:12]
    venv = CACHE / "bench" / f"custom-image-{key}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        python = str(venv / "bin" / "python")
        for listed in (["-r", str(IMAGE_REQUIREMENTS)], requirements):
            subprocess.run(
                [str(UV), "pip", "install", "--quiet", "--compile-bytecode", "--python", python, *listed],
                check=True,
            )
        (venv / ".complete").write_text("")
    return venv


def wheelhouse(requirements: list[str]) -> Path:
    image = IMAGE_REQUIREMENTS.read_text()
    key = hashlib.sha256("\n".join([*sorted(requirements), image]).encode()).hexdigest()[:16]
    house = CACHE / "wheelhouse" / key
    if not (house / ".complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        listed = house / "requirements.txt"
        listed.write_text("\n".join(requirements) + "\n")
        pip = shutil.which("pip3") or shutil.which("pip")
        if pip is None:
            raise SystemExit("making the wheelhouse needs pip on the host")
        subprocess.run(
            [pip, "download", "--quiet", "--only-binary=:all:", "-d", str(house), "-r", str(listed)],
            check=True,
        )
        (house / ".complete").write_text("")
    return house


def register(tracking_uri: str) -> tuple[str, str, list[str]]:
    """(sklearn model URI, no-install model URI, the sklearn model's logged requirements)."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    features = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0]])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(features, [0, 0, 1, 1]),
            name="model",
            input_example=features[:1],
            registered_model_name="bench-sklearn",
        )
        floor = mlflow.pyfunc.log_model(
            name="floor",
            python_model=str(REPO / "bench" / "models" / "identity.py"),
            pip_requirements=["mlflow-skinny", "numpy", "pandas"],
            registered_model_name="bench-floor",
        )
    local = mlflow.artifacts.download_artifacts(f"models:/bench-sklearn/{info.registered_model_version}")
    logged = Path(local, "requirements.txt").read_text().split()
    return (
        f"models:/bench-sklearn/{info.registered_model_version}",
        f"models:/bench-floor/{floor.registered_model_version}",
        logged,
    )


@contextlib.contextmanager
def spawned(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process)


def cold_start(command: list[str], env: dict[str, str], port: int, log: Path, timeout: float) -> float:
    with spawned(command, env, log) as process:
        try:
            return first_prediction(port, process, timeout=timeout)
        except SystemExit as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{error}; the end of its log:\n{tail}") from None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="aliasroll,uv,virtualenv")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    servers = args.servers.split(",")

    import serving

    serving.BODY = json.dumps({"inputs": BODY_ROWS}).encode()
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-deps-"))
    try:
        return run(work, servers, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, servers: list[str], timeout: float) -> int:
    results: dict[str, float] = {}
    with MlflowServer(work / "mlflow") as mlflow_server:
        # Outside the repository: MLflow would log this uv project's whole lock as the requirements.
        os.chdir(work)
        uri, floor_uri, logged = register(mlflow_server.url)
        print("the model logged:", " ".join(logged), flush=True)
        peers = [line for line in logged if not line.startswith("mlflow")]
        # The peers install the full mlflow the model logged; the mirror has it too.
        house = wheelhouse([*peers, *[line for line in logged if line.startswith("mlflow")]])
        index = PackageIndex(work / "index", house.glob("*.whl")).start()
        try:
            base = {
                **os.environ,
                "MLFLOW_TRACKING_URI": mlflow_server.url,
                "UV_INDEX_URL": index.url(),
                "PIP_INDEX_URL": index.url(),
                "UV_PYTHON_DOWNLOADS": "never",
            }
            if "aliasroll" in servers:
                image = str(image_venv() / "bin" / "python")
                custom = str(custom_image_venv(peers) / "bin" / "python")
                cache = work / "dependency-cache"
                for label, python, model, keep in (
                    ("aliasroll, cold cache", image, uri, False),
                    ("aliasroll, warm cache", image, uri, True),
                    ("aliasroll, no install (custom image)", custom, uri, True),
                    ("aliasroll, no install (image's packages)", image, floor_uri, True),
                ):
                    if not keep:
                        shutil.rmtree(cache, ignore_errors=True)
                    port = free_port()
                    scratch = Path(tempfile.mkdtemp(dir=work, prefix="scratch-"))
                    env = {
                        **base,
                        "MODEL_URI": model,
                        "PORT": str(port),
                        "SCRATCH_DIR": str(scratch),
                        "ALIASROLL_DEPENDENCY_CACHE": str(cache),
                        "PYTHONPATH": str(REPO / "operator"),
                        "ALIASROLL_DEPENDENCIES": "image" if python == custom else "install",
                    }
                    results[label] = cold_start(
                        [python, "-m", "aliasroll.serving"], env, port, work / f"{label}.log", timeout
                    )
                    said = [
                        line.split(": ", 1)[-1]
                        for line in (work / f"{label}.log").read_text().splitlines()
                        if "dependencies:" in line
                    ]
                    print(f"{label:40s} {results[label]:6.1f} s  ({'; '.join(said)[:160]})", flush=True)
            for manager in ("uv", "virtualenv"):
                if manager not in servers:
                    continue
                port = free_port()
                env = {
                    **base,
                    "MLFLOW_ENV_ROOT": str(work / f"envs-{manager}"),
                    "UV_CACHE_DIR": str(work / f"uv-cache-{manager}"),
                    "PIP_NO_CACHE_DIR": "1",
                    "VIRTUALENV_OVERRIDE_APP_DATA": str(work / f"virtualenv-{manager}"),
                    # MLflow runs `uv` and `virtualenv` from PATH: the venv's own.
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                }
                label = f"mlflow models serve --env-manager {manager}"
                command = [
                    str(Path(sys.executable).parent / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "-p",
                    str(port),
                    "--env-manager",
                    manager,
                ]
                results[label] = cold_start(command, env, port, work / f"{manager}.log", timeout)
                print(f"{label:40s} {results[label]:6.1f} s", flush=True)
        finally:
            index.stop()
    peers_done = [value for key, value in results.items() if key.startswith("mlflow")]
    if "aliasroll, cold cache" in results and peers_done:
        ratio = results["aliasroll, cold cache"] / min(peers_done)
        print(f"cold cache / fastest peer: {ratio:.2f}x (goal <= 0.5x)")
    if "aliasroll, warm cache" in results:
        gap = results["aliasroll, warm cache"] - results["aliasroll, no install (custom image)"]
        print(f"warm cache - no install: {gap:+.1f} s (goal <= 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
