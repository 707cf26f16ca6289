"""Benchmark: the aliasroll model server against its peers, side by side in one run.

Peers: `mlflow models serve` (MLflow's own), and MLServer 1.7 with mlserver-mlflow (what KServe runs
for MLflow models), in a venv of its own (bench/peers/mlserver/, made on first use, about a minute).
For each model (the example sentiment pyfunc, and a heavier NumPy model) and each server, on the
same registered version from a real mlflow server:
  cold start   spawn -> first successful prediction (a server downloads the version itself; for
               MLServer the download runs first, as KServe's storage initializer would, and counts)
  throughput   requests/s at concurrency 1, 8 and 32 (hey, keep-alive, one-row JSON requests, all on
               MLflow's POST /invocations with the same body)
  latency      p50 and p99 at each concurrency
and prints our figures over each peer's as ratios. Everything runs on loopback, for fixed durations,
and every process started is stopped at the end, also on failure or Ctrl-C.

    make bench-serving                    # or: .venv/bin/python bench/serving.py --seconds 8
    .venv/bin/python bench/serving.py --models sentiment --servers mlflow,aliasroll --concurrency 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import REPO, argument_parser, nearest_rank, prelude

prelude("localenv", "", quiet_mlflow=False)

from mlflowserver import MlflowServer, free_port  # noqa: E402

BODY = json.dumps({"dataframe_split": {"columns": ["text"], "data": [["this is great, I love it"]]}}).encode()
CONCURRENCY = (1, 8, 32)
MODELS = ("sentiment", "dense")
# Printed in this order; "aliasroll" is compared with every other one.
SERVERS = {"mlflow": "mlflow models serve", "mlserver": "MLServer 1.7", "aliasroll": "aliasroll"}

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aliasroll"
UV = CACHE / "tools" / "uv-0.13.8" / "bin" / "uv"
MLSERVER_REQUIREMENTS = REPO / "bench" / "peers" / "mlserver" / "requirements.txt"


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Result:
    cold_start_s: float
    loads: dict[int, Load]


@dataclass
class Launch:
    """How to start one server: the command, its environment and directory, and the seconds spent
    before the spawn that still count in its cold start (MLServer's download)."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    before_spawn_s: float = 0.0


def first_prediction(port: int, process: subprocess.Popen[bytes], timeout: float = 180) -> float:
    started = time.monotonic()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=BODY, headers={"Content-Type": "application/json"}
    )
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    raise SystemExit("no successful prediction before the timeout")


def hey(binary: Path, port: int, *, concurrency: int, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(BODY)
        body.flush()
        out = subprocess.run(
            [
                str(binary),
                "-z",
                f"{seconds}s",
                "-c",
                str(concurrency),
                "-m",
                "POST",
                "-T",
                "application/json",
                "-D",
                body.name,
                "-o",
                "csv",
                f"http://127.0.0.1:{port}/invocations",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    # Percentiles from every request's own timing (hey -o csv): hey's summary leaves p99 at 0
    # when a run has fewer than 100 requests, which the slow peer at high concurrency can.
    rows = [line.split(",") for line in out.splitlines()[1:] if line.strip()]
    if not rows:
        raise SystemExit(f"hey recorded no requests:\n{out}")
    ok = sorted(float(row[0]) for row in rows if row[6] == "200")
    elapsed = max(float(row[7]) + float(row[0]) for row in rows)  # offset from start + response time
    if not ok:
        raise SystemExit(f"no request succeeded at concurrency {concurrency}")
    return Load(
        rps=len(ok) / elapsed,
        p50_ms=nearest_rank(ok, 50) * 1000,
        p99_ms=nearest_rank(ok, 99) * 1000,
        errors=len(rows) - len(ok),
    )


def run_server(
    *, name: str, launch: Launch, hey_bin: Path, seconds: float, levels: tuple[int, ...], log_dir: Path
) -> Result:
    log_path = log_dir / f"{name}-{launch.port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child
    # A session of its own, so the whole group (MLServer's inference workers too) is stopped at once.
    process = subprocess.Popen(
        launch.command,
        env=launch.env,
        cwd=launch.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            cold = launch.before_spawn_s + first_prediction(launch.port, process)
        except SystemExit as error:
            tail = log_path.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(f"{name}: {error}; the end of {log_path}:\n" + "\n".join(tail)) from None
        hey(hey_bin, launch.port, concurrency=8, seconds=2)  # warm-up, not counted
        loads = {c: hey(hey_bin, launch.port, concurrency=c, seconds=seconds) for c in levels}
        return Result(cold, loads)
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    # Whatever of the group outlived SIGTERM (the leader may have exited before its children).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# MLServer: its own venv, pinned by bench/peers/mlserver/requirements.txt.


def mlserver_venv() -> Path:
    """The MLServer venv for the pinned requirements, made on first use and reused after."""
    digest = hashlib.sha256(MLSERVER_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = CACHE / "peers" / f"mlserver-{digest}"
    done = venv / ".aliasroll-complete"
    if done.is_file():
        return venv
    if not UV.is_file():
        raise SystemExit(f"{UV} is missing: run `make venv` first (it installs the project's pinned uv)")
    shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
    print(f"making the MLServer venv {venv} (once, about a minute) ...", flush=True)
    # Never a downloaded interpreter: the machine's Python 3.11, like the project's.
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([str(UV), "venv", "--quiet", "--python", "3.11", str(venv)], env=env, check=True)
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--compile-bytecode", "-r", str(MLSERVER_REQUIREMENTS)],
        env=env,
        check=True,
    )
    done.write_text(MLSERVER_REQUIREMENTS.read_text())
    return venv


def mlserver_launch(*, venv: Path, uri: str, label: str, env: dict[str, str], work: Path) -> Launch:
    """Downloads the version (timed: part of the cold start) and writes MLServer's settings."""
    port = free_port()
    root = work / f"mlserver-{port}"
    name = label.split()[0]
    model_dir = root / name  # MLServer warns when the folder and the model's name differ
    model_dir.mkdir(parents=True)
    python = str(venv / "bin" / "python")
    started = time.monotonic()
    subprocess.run(
        [
            python,
            "-c",
            "import sys, mlflow.artifacts; "
            "mlflow.artifacts.download_artifacts(artifact_uri=sys.argv[1], dst_path=sys.argv[2])",
            uri,
            str(model_dir / "artifacts"),
        ],
        env=env,
        check=True,
        timeout=300,
    )
    downloaded = time.monotonic() - started
    # Server-wide settings: loopback only, free ports for every listener it opens (REST, gRPC,
    # metrics); everything else at MLServer's defaults (one parallel inference worker).
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "environments_dir": str(root / "envs"),
                "metrics_dir": str(root / "metrics"),
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": name,
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": "./artifacts"},
            }
        )
    )
    return Launch(
        command=[str(venv / "bin" / "mlserver"), "start", str(root)],
        env={**env, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"},
        cwd=root,
        port=port,
        before_spawn_s=downloaded,
    )


# The registry side.


def register(tracking_uri: str, models: tuple[str, ...]) -> dict[str, str]:
    import mlflow
    from examples.sentiment.register import register_version
    from mlflow.models import infer_signature

    registered = {}
    if "sentiment" in models:
        registered["sentiment"] = f"models:/sentiment/{register_version(tracking_uri, 'sentiment')}"
    if "dense" in models:
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(REPO / "bench" / "models" / "dense_model.py"),
                signature=infer_signature(["this is great"], [0.5]),
                input_example=["this is great"],
                pip_requirements=["mlflow-skinny", "numpy", "pandas"],
                registered_model_name="dense",
            )
        registered["dense (3x1024 layers)"] = f"models:/dense/{info.registered_model_version}"
    return registered


def _choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        picked = tuple(part.strip() for part in value.split(",") if part.strip())
        unknown = [part for part in picked if part not in allowed]
        if unknown or not picked:
            raise argparse.ArgumentTypeError(f"choose among {', '.join(allowed)} (comma-separated)")
        return picked

    return parse


def _levels(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 1,8,32") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return levels


def parse_args() -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=8, help="load duration per concurrency level")
    parser.add_argument("--models", type=_choices(MODELS), default=MODELS, help="sentiment,dense")
    parser.add_argument(
        "--servers", type=_choices(tuple(SERVERS)), default=tuple(SERVERS), help="mlflow,mlserver,aliasroll"
    )
    parser.add_argument("--concurrency", type=_levels, default=CONCURRENCY, help="levels, e.g. 1,8,32")
    args = parser.parse_args()
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be in (0, 120]")
    return args


def local_bin_dir() -> Path:
    """The folder of the local binaries (hey among them), built by localenv/build.sh."""
    return Path(
        subprocess.run([str(REPO / "localenv" / "build.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )


def launch_of(
    server: str, *, uri: str, label: str, env: dict[str, str], work: Path, mlserver: Path | None
) -> Launch:
    """How to start `server` on the model at `uri`."""
    if server == "mlserver":
        assert mlserver is not None
        return mlserver_launch(venv=mlserver, uri=uri, label=label, env=env, work=work)
    port = free_port()
    if server == "aliasroll":
        return Launch(
            command=[sys.executable, "-m", "aliasroll.serving"],
            env={
                **env,
                "MODEL_URI": uri,
                "PORT": str(port),
                "ADMIN_PORT": str(free_port()),
                "SCRATCH_DIR": str(work / f"scratch-{port}"),
            },
            cwd=work,
            port=port,
        )
    return Launch(
        command=[
            f"{Path(sys.executable).parent}/mlflow",
            *("models", "serve", "-m", uri, "--env-manager", "local"),
            *("--host", "127.0.0.1", "-p", str(port)),
        ],
        env=env,
        cwd=work,
        port=port,
    )


def main() -> None:
    args = parse_args()
    servers = [key for key in SERVERS if key in args.servers]  # the report's order
    bin_dir = local_bin_dir()
    mlserver = mlserver_venv() if "mlserver" in servers else None
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-serving-"))
    venv_bin = str(Path(sys.executable).parent)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every finally below stops its servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with MlflowServer(work / "mlflow") as registry:
        print(f"registering the models in {registry.url} ...", flush=True)
        models = register(registry.url, args.models)
        results: dict[str, dict[str, Result]] = {}
        for label, uri in models.items():
            results[label] = {}
            base_env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": registry.url,
                "PATH": f"{venv_bin}:{os.environ['PATH']}",
            }
            for server in servers:
                print(f"{label}: {SERVERS[server]} ...", flush=True)
                launch = launch_of(server, uri=uri, label=label, env=base_env, work=work, mlserver=mlserver)
                results[label][server] = run_server(
                    name=server,
                    launch=launch,
                    hey_bin=bin_dir / "hey",
                    seconds=args.seconds,
                    levels=args.concurrency,
                    log_dir=work,
                )
    report(results, servers=servers, levels=args.concurrency, seconds=args.seconds)
    print(f"\nlogs: {work}")


def report(
    results: dict[str, dict[str, Result]], *, servers: list[str], levels: tuple[int, ...], seconds: float
) -> None:
    peers = [server for server in servers if server != "aliasroll"]
    compare = "aliasroll" in servers and bool(peers)
    width = 24
    print(
        f"\nmodel server benchmark ({os.cpu_count()} cores, {seconds:g} s per level; one-row JSON "
        "requests over keep-alive connections, all on POST /invocations)"
    )
    header = "".join(f"{SERVERS[server]:>{width}}" for server in servers)
    if compare:
        header += "".join(f"{'ours/' + peer:>16}" for peer in peers)
    for label, by_server in results.items():
        print(f"\n{label}")
        print(f"  {'':<20}{header}")
        line = f"  {'cold start (s)':<20}" + "".join(
            f"{by_server[server].cold_start_s:>{width}.2f}" for server in servers
        )
        if compare:
            ours = by_server["aliasroll"].cold_start_s
            line += "".join(f"{ours / by_server[peer].cold_start_s:>15.2f}x" for peer in peers)
        print(line)
        for c in levels:
            loads = {server: by_server[server].loads[c] for server in servers}
            line = f"  {f'c={c} req/s':<20}" + "".join(f"{loads[s].rps:>{width}.0f}" for s in servers)
            if compare:
                line += "".join(f"{loads['aliasroll'].rps / loads[p].rps:>15.2f}x" for p in peers)
            print(line)
            line = f"  {f'c={c} p50 / p99 (ms)':<20}" + "".join(
                f"{f'{loads[s].p50_ms:.1f} / {loads[s].p99_ms:.1f}':>{width}}" for s in servers
            )
            if compare:
                line += "".join(f"{loads['aliasroll'].p99_ms / loads[p].p99_ms:>15.2f}x" for p in peers)
            print(line)
            if any(load.errors for load in loads.values()):
                print(f"  {'errors':<20}" + "".join(f"{loads[s].errors:>{width}}" for s in servers))
    if compare:
        print(
            "\nours/<peer> = aliasroll / that peer: req/s higher is better; on the p50/p99 line the ratio is "
            "of p99, and like cold start, lower is better. MLServer's cold start includes downloading the "
            "version before it starts (KServe's storage initializer)."
        )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
