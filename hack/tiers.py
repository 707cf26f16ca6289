"""`make test`: lint, then unit + integration (real MLflow servers, a real Prometheus), streamed to
the terminal, while the tiers that stand on a cluster run beside them from the start as sessions,
each with a control plane of its own: the end-to-end tier (kwok); the real-pod tier as two sessions
with a real node each, the rollouts (transitions, the watched canary) in one, the rest of
tests/e2e_real in the other; and the install tier (tests/e2e_install: the operator image as pods
from the shipped manifests, on a cluster whose one node is real). Their output goes to
.work/<session>.log and is shown when all are done. Fails if any fails; a lint failure stops the
sessions at once.

The cluster tiers mostly wait (pods starting, probes, pods draining, lease expiries, the operator's
timers), so on 2 cores the wall time is about the longest session rather than the sum. The
sessions share nothing but the machine: state dirs under .work named by ALIASROLL_E2E_RUN,
ALIASROLL_E2E_REAL_RUN and ALIASROLL_E2E_INSTALL_RUN, free ports, pytest's numbered temp dirs, and
the kernel settings kubelet changes (localkube's sysctls.py hands them back when the last node
stops).

Ctrl-C reaches every process here (they stay in the terminal's process group); this waits while
each pytest stops what it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest"]
# The real-pod tier in two sessions of about the same length: rollouts under load (transitions and
# the watched canary's), and the rest (the node, serving claims, model dependencies).
ROLLOUTS = ("tests/e2e_real/test_transitions.py", "tests/e2e_real/test_canary_analysis.py")


@dataclass(frozen=True)
class Session:
    """One session with a cluster of its own: what it runs and where its output goes."""

    run: str  # names its state dir and operator log under .work (through `env`)
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def log(self) -> Path:
        return REPO / ".work" / f"{self.run}.log"

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **dict(self.env)}
        with self.log.open("wb") as log:
            # The slowest tests' times, in the log: where the tier's minutes go.
            return subprocess.Popen(
                [*PYTEST, "--durations=5", *self.args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )


def real(run: str, *args: str) -> Session:
    return Session(run, args, (("ALIASROLL_REQUIRE_REAL_NODE", "1"), ("ALIASROLL_E2E_REAL_RUN", run)))


SESSIONS = (
    Session("e2e", ("tests/e2e",), (("ALIASROLL_E2E_RUN", "e2e"),)),
    real("e2e-real-rollouts", *ROLLOUTS),
    real("e2e-real-serving", "tests/e2e_real", *(f"--ignore={path}" for path in ROLLOUTS)),
    # The operator image as pods, from the shipped manifests, on a cluster whose one node is real.
    Session(
        "e2e-install",
        ("tests/e2e_install",),
        (("ALIASROLL_REQUIRE_REAL_NODE", "1"), ("ALIASROLL_E2E_INSTALL_RUN", "e2e-install")),
    ),
)


def verdict(code: int) -> str:
    return "passed" if code == 0 else f"FAILED (pytest exit {code})"


def main() -> int:
    (REPO / ".work").mkdir(exist_ok=True)
    started = time.monotonic()
    running = {session: session.start() for session in SESSIONS}
    logs = ", ".join(str(session.log.relative_to(REPO)) for session in SESSIONS)
    print(f"the cluster tiers run beside these; their output ({logs}) is shown when they end", flush=True)
    try:
        if subprocess.run(["make", "--no-print-directory", "lint"], cwd=REPO).returncode != 0:
            print("lint failed: stopping the cluster tiers", flush=True)
            for process in running.values():
                process.send_signal(signal.SIGINT)
            for process in running.values():
                process.wait()
            return 1
        rest = subprocess.run([*PYTEST, "tests/unit", "tests/integration"], cwd=REPO).returncode
        if any(process.poll() is None for process in running.values()):
            print(f"waiting for the cluster tiers ({time.monotonic() - started:.0f} s so far)", flush=True)
        codes = {session: process.wait() for session, process in running.items()}
    except KeyboardInterrupt:
        print("\ninterrupted: waiting for the cluster tiers to stop what they started ...", flush=True)
        for process in running.values():
            process.wait()
        return 130
    for session in SESSIONS:
        title = f" {session.run}: pytest {' '.join(session.args)} "
        print(f"\n{title:=^100}", flush=True)
        with session.log.open("rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
        sys.stdout.flush()
    print(f"\nunit + integration: {verdict(rest)}", flush=True)
    for session, code in codes.items():
        print(f"{session.run}, pytest {' '.join(session.args)}: {verdict(code)}", flush=True)
    print(f"({time.monotonic() - started:.0f} s)", flush=True)
    return 0 if rest == 0 and not any(codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
