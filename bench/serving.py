"""Benchmark: the aliasroll model server against `mlflow models serve`, side by side in one run.

For each model (the example sentiment pyfunc, and a heavier NumPy model) and each server, on the
same registered version from a real mlflow server:
  cold start   spawn -> first successful prediction (the server downloads the version itself)
  throughput   requests/s at concurrency 1, 8 and 32 (hey, keep-alive, one-row JSON requests)
  latency      p50 and p99 at each concurrency
and prints our figures over the reference's as ratios.

    make bench-serving                    # or: .venv/bin/python bench/serving.py --seconds 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "localenv"), str(REPO)]

from mlflowserver import MlflowServer, free_port  # noqa: E402

BODY = json.dumps({"dataframe_split": {"columns": ["text"], "data": [["this is great, I love it"]]}}).encode()
CONCURRENCY = (1, 8, 32)


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
        ).stdout
    # Percentiles from every request's own timing (hey -o csv): hey's summary leaves p99 at 0
    # when a run has fewer than 100 requests, which the slow anchor at high concurrency can.
    rows = [line.split(",") for line in out.splitlines()[1:] if line.strip()]
    if not rows:
        raise SystemExit(f"hey recorded no requests:\n{out}")
    ok = sorted(float(row[0]) for row in rows if row[6] == "200")
    elapsed = max(float(row[7]) + float(row[0]) for row in rows)  # offset from start + response time
    if not ok:
        raise SystemExit(f"no request succeeded at concurrency {concurrency}")
    return Load(
        rps=len(ok) / elapsed,
        p50_ms=_percentile(ok, 50) * 1000,
        p99_ms=_percentile(ok, 99) * 1000,
        errors=len(rows) - len(ok),
    )


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def run_server(
    name: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    hey_bin: Path,
    seconds: float,
    log_dir: Path,
) -> Result:
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cold = first_prediction(port, process)
        hey(hey_bin, port, concurrency=8, seconds=2)  # warm-up, not counted
        loads = {c: hey(hey_bin, port, concurrency=c, seconds=seconds) for c in CONCURRENCY}
        return Result(cold, loads)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def register(tracking_uri: str) -> dict[str, str]:
    import mlflow
    from examples.sentiment.register import register_version
    from mlflow.models import infer_signature

    models = {"sentiment": f"models:/sentiment/{register_version(tracking_uri, 'sentiment')}"}
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
    models["dense (3x1024 layers)"] = f"models:/dense/{info.registered_model_version}"
    return models


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8, help="load duration per concurrency level")
    args = parser.parse_args()
    bin_dir = Path(
        subprocess.run([str(REPO / "localenv" / "build.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    work = Path(tempfile.mkdtemp(prefix="aliasroll-bench-serving-"))
    venv_bin = str(Path(sys.executable).parent)
    with MlflowServer(work / "mlflow") as registry:
        print(f"registering the models in {registry.url} ...", flush=True)
        models = register(registry.url)
        results: dict[str, dict[str, Result]] = {}
        for label, uri in models.items():
            results[label] = {}
            base_env = {
                **os.environ,
                "MLFLOW_TRACKING_URI": registry.url,
                "PATH": f"{venv_bin}:{os.environ['PATH']}",
            }
            for server in ("mlflow models serve", "aliasroll"):
                port = free_port()
                if server == "aliasroll":
                    command = [sys.executable, "-m", "aliasroll.serving"]
                    env = {
                        **base_env,
                        "MODEL_URI": uri,
                        "PORT": str(port),
                        "SCRATCH_DIR": str(work / f"scratch-{port}"),
                    }
                else:
                    command = [
                        f"{venv_bin}/mlflow",
                        "models",
                        "serve",
                        "-m",
                        uri,
                        "--env-manager",
                        "local",
                        "--host",
                        "127.0.0.1",
                        "-p",
                        str(port),
                    ]
                    env = base_env
                print(f"{label}: {server} ...", flush=True)
                results[label][server] = run_server(
                    server.split()[0], command, env, port, bin_dir / "hey", args.seconds, work
                )
    report(results)
    print(f"\nlogs: {work}")


def report(results: dict[str, dict[str, Result]]) -> None:
    print("\nmodel server benchmark (2 cores; one-row JSON requests over keep-alive connections)")
    for label, by_server in results.items():
        ours, theirs = by_server["aliasroll"], by_server["mlflow models serve"]
        print(f"\n{label}")
        print(f"  {'':<22}{'mlflow models serve':>26}{'aliasroll':>26}{'ratio':>10}")
        print(
            f"  {'cold start (s)':<22}{theirs.cold_start_s:>26.2f}{ours.cold_start_s:>26.2f}"
            f"{ours.cold_start_s / theirs.cold_start_s:>9.2f}x"
        )
        for c in CONCURRENCY:
            a, b = theirs.loads[c], ours.loads[c]
            print(f"  {f'c={c} req/s':<22}{a.rps:>26.0f}{b.rps:>26.0f}{b.rps / a.rps:>9.2f}x")
            print(
                f"  {f'c={c} p50 / p99 (ms)':<22}{f'{a.p50_ms:.1f} / {a.p99_ms:.1f}':>26}"
                f"{f'{b.p50_ms:.1f} / {b.p99_ms:.1f}':>26}{b.p99_ms / a.p99_ms:>9.2f}x"
            )
            if a.errors or b.errors:
                print(f"  {'':<22}{f'{a.errors} errors':>26}{f'{b.errors} errors':>26}")
    print("\nratio = aliasroll / mlflow models serve (throughput: higher is better; p99, cold start: lower)")


if __name__ == "__main__":
    main()
