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

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import REPO, argument_parser, prelude

prelude("localenv", "", "tests", quiet_mlflow=False)

from serving import first_prediction, stop_group  # noqa: E402

from mlflowserver import MlflowServer, free_port  # noqa: E402
from support.package_index import PackageIndex, wheelhouse, without_hashes  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aliasroll"
UV = CACHE / "tools" / "uv-0.13.8" / "bin" / "uv"
IMAGE_REQUIREMENTS = REPO / "serving-image" / "requirements.txt"
BODY_ROWS = [[0.5, 1.0]]


def image_venv() -> Path:
    """The serving image's Python environment, made once per requirements.txt's pins (uv's cache;
    uv checks each file against the hashes listed there)."""
    key = hashlib.sha256(without_hashes(IMAGE_REQUIREMENTS.read_text()).encode()).hexdigest()[:12]
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


@dataclass(frozen=True)
class Registered:
    model: str  # the scikit-learn model's URI
    floor: str  # a pyfunc the image has every package of
    requirements: list[str]  # what MLflow logged for the scikit-learn model
    build: list[str]  # python_env.yaml's build_dependencies (pip, ...): the peers install them first


def register(tracking_uri: str) -> Registered:
    import mlflow
    import numpy as np
    import yaml
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
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/bench-sklearn/{info.registered_model_version}")
    )
    python_env = yaml.safe_load((local / "python_env.yaml").read_text())
    return Registered(
        model=f"models:/bench-sklearn/{info.registered_model_version}",
        floor=f"models:/bench-floor/{floor.registered_model_version}",
        requirements=(local / "requirements.txt").read_text().split(),
        build=[str(line) for line in python_env.get("build_dependencies") or []],
    )


@dataclass(frozen=True)
class Start:
    seconds: float  # spawn -> first successful prediction
    cpu: float  # CPU seconds of the whole process tree (user + system), up to its stop


def become_subreaper() -> None:
    """Orphans of a server (its children, once their parent exits) become this process's, so their
    CPU time is counted when they are reaped (Linux prctl PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_start(command: list[str], env: dict[str, str], port: int, log: Path, timeout: float) -> Start:
    before = children_cpu()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        seconds = first_prediction(port, process, timeout=timeout)
    except SystemExit as error:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{error}; the end of its log:\n{tail}") from None
    finally:
        stop_group(process)
        # Every process of its group (SIGKILLed by now), orphans included: their CPU is then counted.
        with contextlib.suppress(ChildProcessError):
            while True:
                os.waitpid(-process.pid, 0)
    return Start(seconds, children_cpu() - before)


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--servers", default="aliasroll,uv,virtualenv")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    servers = args.servers.split(",")

    import serving

    serving.BODY = json.dumps({"inputs": BODY_ROWS}).encode()
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-deps-"))
    try:
        return run(work, servers, args.runs, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Contestant:
    label: str
    command: Callable[[int], list[str]]  # the port -> the command line
    env: dict[str, str]
    caches: tuple[Path, ...]  # emptied before a cold start, kept for a warm one
    cold: bool


COLD, WARM = "cold cache", "warm cache"
OURS_COLD, OURS_WARM = f"aliasroll, {COLD}", f"aliasroll, {WARM}"
OURS_CUSTOM = "aliasroll, no install (custom image)"
OURS_FLOOR = "aliasroll, no install (image's packages)"


def contestants(work: Path, servers: list[str], base: dict[str, str], model: Registered) -> list[Contestant]:
    out: list[Contestant] = []
    if "aliasroll" in servers:
        image = str(image_venv() / "bin" / "python")
        custom = str(custom_image_venv(peer_requirements(model)) / "bin" / "python")
        cache = work / "dependency-cache"

        def ours(python: str) -> Callable[[int], list[str]]:
            return lambda port: [python, "-m", "aliasroll.serving"]

        shared = {
            **base,
            "ALIASROLL_DEPENDENCY_CACHE": str(cache),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONDONTWRITEBYTECODE": "1",  # as the image sets it
        }
        for label, python, uri, mode, cold in (
            (OURS_COLD, image, model.model, "install", True),
            (OURS_WARM, image, model.model, "install", False),
            (OURS_CUSTOM, custom, model.model, "image", False),
            (OURS_FLOOR, image, model.floor, "install", False),
        ):
            env = {**shared, "MODEL_URI": uri, "ALIASROLL_DEPENDENCIES": mode}
            out.append(Contestant(label, ours(python), env, (cache,), cold))
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    for manager in ("uv", "virtualenv"):
        if manager not in servers:
            continue
        envs, uv_cache, pip_cache = (work / f"{manager}-{part}" for part in ("envs", "uv-cache", "pip-cache"))
        env = {
            **{k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"},  # as users run it
            "MLFLOW_ENV_ROOT": str(envs),
            "UV_CACHE_DIR": str(uv_cache),
            "PIP_CACHE_DIR": str(pip_cache),
            # MLflow runs `uv` from PATH (the venv's own) and `pyenv` (the host's: it finds the
            # model's Python there, installed, so nothing is downloaded).
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

        def serve(port: int, manager: str = manager) -> list[str]:
            return [
                mlflow_cli,
                "models",
                "serve",
                "-m",
                model.model,
                "-p",
                str(port),
                "--env-manager",
                manager,
            ]

        for state, cold in ((COLD, True), (WARM, False)):
            label = f"mlflow models serve --env-manager {manager}, {state}"
            out.append(Contestant(label, serve, env, (envs, uv_cache, pip_cache), cold))
    return out


def peer_requirements(model: Registered) -> list[str]:
    return [line for line in model.requirements if not line.startswith("mlflow")]


def measure(work: Path, contestant: Contestant, run: int, timeout: float) -> Start:
    if contestant.cold:
        for cache in contestant.caches:
            shutil.rmtree(cache, ignore_errors=True)
    port = free_port()
    scratch = Path(tempfile.mkdtemp(dir=work, prefix="scratch-"))
    # ADMIN_PORT: only aliasroll's server reads it (its /ready and /metrics; the peers ignore it).
    env = {**contestant.env, "PORT": str(port), "ADMIN_PORT": str(free_port()), "SCRATCH_DIR": str(scratch)}
    log = work / f"{contestant.label.replace(' ', '_').replace('/', '_')}-{run}.log"
    start = cold_start(contestant.command(port), env, port, log, timeout)
    shutil.rmtree(scratch, ignore_errors=True)
    # The server's own account: its download, dependencies and load times.
    said = [line.split(": ", 1)[-1] for line in log.read_text().splitlines() if ": loaded models:/" in line]
    note = f"  ({'; '.join(said)[:140]})" if said else ""
    print(
        f"run {run}  {contestant.label:52s} {start.seconds:6.1f} s  cpu {start.cpu:6.1f} s{note}", flush=True
    )
    return start


def run(work: Path, servers: list[str], runs: int, timeout: float) -> int:
    become_subreaper()
    results: dict[str, list[Start]] = {}
    with MlflowServer(work / "mlflow") as mlflow_server:
        # Outside the repository: MLflow would log this uv project's whole lock as the requirements.
        os.chdir(work)
        model = register(mlflow_server.url)
        print(
            "the model logged:", " ".join(model.requirements), "; build:", " ".join(model.build), flush=True
        )
        # The peers install the full mlflow the model logged, and its build dependencies; the
        # mirror has them too.
        house = wheelhouse(CACHE / "wheelhouse", [*model.requirements, *model.build], IMAGE_REQUIREMENTS)
        index = PackageIndex(work / "index", house.glob("*.whl")).start()
        try:
            base = {
                **os.environ,
                "MLFLOW_TRACKING_URI": mlflow_server.url,
                "UV_INDEX_URL": index.url(),
                "PIP_INDEX_URL": index.url(),
                "UV_PYTHON_DOWNLOADS": "never",
            }
            entrants = contestants(work, servers, base, model)
            # Run by run, every contestant in turn: the machine's load falls on all alike.
            for number in range(1, runs + 1):
                for contestant in entrants:
                    results.setdefault(contestant.label, []).append(
                        measure(work, contestant, number, timeout)
                    )
        finally:
            index.stop()
    print()
    print(summary(results))
    return 0


def summary(results: dict[str, list[Start]]) -> str:
    """A markdown table: each run, the medians, and their ratios to the fastest peer's cold start;
    then the goals (on the wall-clock medians)."""
    medians = {label: statistics.median(s.seconds for s in starts) for label, starts in results.items()}
    cpu = {label: statistics.median(s.cpu for s in starts) for label, starts in results.items()}
    peers = [label for label in medians if label.startswith("mlflow") and label.endswith(COLD)]
    fastest = min(peers, key=lambda label: medians[label]) if peers else None
    runs = max(len(starts) for starts in results.values())
    head = ["spawn -> first prediction", *(f"run {n}" for n in range(1, runs + 1)), "median"]
    head += ["/ fastest peer (cold)", "CPU s (median)", "CPU / fastest peer's"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, starts in results.items():
        ratio = f"{medians[label] / medians[fastest]:.2f}x" if fastest else ""
        cpu_ratio = f"{cpu[label] / cpu[fastest]:.2f}x" if fastest else ""
        cells = [label, *(f"{s.seconds:.1f} s" for s in starts), f"**{medians[label]:.1f} s**", ratio]
        cells += [f"{cpu[label]:.1f} s", cpu_ratio]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if OURS_COLD in medians and fastest:
        ratio = medians[OURS_COLD] / medians[fastest]
        verdict = "met" if ratio <= 0.5 else "NOT met"
        lines.append(f"cold cache / fastest peer's cold start: {ratio:.2f}x (goal <= 0.5x: {verdict})")
    if OURS_WARM in medians:
        for floor in (OURS_CUSTOM, OURS_FLOOR):
            if floor in medians:
                gap = medians[OURS_WARM] - medians[floor]
                verdict = "met" if gap <= 1.0 else "NOT met"
                lines.append(f"warm cache - {floor.split(', ', 1)[1]}: {gap:+.1f} s (goal <= 1 s: {verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
