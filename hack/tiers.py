"""`make test`: lint, then unit + integration + end-to-end (one control plane with kwok), streamed to
the terminal, while the real-pod tier runs beside them from the start as two sessions, each with a
cluster and a real node of its own: the rollouts (transitions, the watched canary) in one, the rest
of tests/e2e_real in the other. Their output goes to .work/e2e-real-*.log and is shown when all
are done. Fails if any fails; a lint failure stops the real-pod sessions at once.

The real-pod tier mostly waits (pods starting, probes, pods draining, the operator's progress
deadline), so on 2 cores the wall time is about the longest session rather than the sum. The
sessions share nothing but the machine: state dirs under .work named by ALIASROLL_E2E_REAL_RUN,
free ports, pytest's numbered temp dirs, and the kernel settings kubelet changes (localkube's
sysctls.py hands them back when the last node stops).

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
    """One real-pod session: what it runs and where its output goes."""

    run: str  # ALIASROLL_E2E_REAL_RUN: its state dir and operator log under .work
    args: tuple[str, ...]

    @property
    def log(self) -> Path:
        return REPO / ".work" / f"{self.run}.log"

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "ALIASROLL_REQUIRE_REAL_NODE": "1", "ALIASROLL_E2E_REAL_RUN": self.run}
        with self.log.open("wb") as log:
            # The slowest tests' times, in the log: where the tier's minutes go.
            return subprocess.Popen(
                [*PYTEST, "--durations=5", *self.args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )


REAL_SESSIONS = (
    Session("e2e-real-rollouts", ROLLOUTS),
    Session("e2e-real-serving", ("tests/e2e_real", *(f"--ignore={path}" for path in ROLLOUTS))),
)


def verdict(code: int) -> str:
    return "passed" if code == 0 else f"FAILED (pytest exit {code})"


def main() -> int:
    (REPO / ".work").mkdir(exist_ok=True)
    started = time.monotonic()
    real = {session: session.start() for session in REAL_SESSIONS}
    logs = ", ".join(str(session.log.relative_to(REPO)) for session in REAL_SESSIONS)
    print(f"the real-pod tier runs beside the others; its output ({logs}) is shown when it ends", flush=True)
    try:
        if subprocess.run(["make", "--no-print-directory", "lint"], cwd=REPO).returncode != 0:
            print("lint failed: stopping the real-pod tier", flush=True)
            for process in real.values():
                process.send_signal(signal.SIGINT)
            for process in real.values():
                process.wait()
            return 1
        rest = subprocess.run([*PYTEST, "tests/unit", "tests/integration", "tests/e2e"], cwd=REPO).returncode
        if any(process.poll() is None for process in real.values()):
            print(f"waiting for the real-pod tier ({time.monotonic() - started:.0f} s so far)", flush=True)
        codes = {session: process.wait() for session, process in real.items()}
    except KeyboardInterrupt:
        print("\ninterrupted: waiting for the real-pod tier to stop what it started ...", flush=True)
        for process in real.values():
            process.wait()
        return 130
    for session in REAL_SESSIONS:
        title = f" real-pod tier: pytest {' '.join(session.args)} "
        print(f"\n{title:=^100}", flush=True)
        with session.log.open("rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
        sys.stdout.flush()
    print(f"\nunit + integration + end-to-end: {verdict(rest)}", flush=True)
    for session, code in codes.items():
        print(f"real pods, {' '.join(session.args)}: {verdict(code)}", flush=True)
    print(f"({time.monotonic() - started:.0f} s)", flush=True)
    return 0 if rest == 0 and not any(codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
