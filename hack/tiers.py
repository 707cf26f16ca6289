"""`make test`: lint, then unit + integration + end-to-end (one control plane with kwok), streamed
to the terminal, while the real-pod tier (a cluster of its own, with the real node) runs beside them
from the start, its output in .work/e2e-real.log, shown when both are done. Fails if any fails; a
lint failure stops the real-pod tier at once.

They share nothing but the machine (their own state dirs under .work, free ports, pytest's numbered
temp dirs), and the real-pod tier mostly waits (pods starting, pods draining, the operator's progress
deadline), so on 2 cores the wall time is about the longer of the two rather than their sum.

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_LOG = REPO / ".work" / "e2e-real.log"
PYTEST = [sys.executable, "-m", "pytest"]


def verdict(code: int) -> str:
    return "passed" if code == 0 else f"FAILED (pytest exit {code})"


def main() -> int:
    REAL_LOG.parent.mkdir(exist_ok=True)
    started = time.monotonic()
    with REAL_LOG.open("wb") as log:
        real = subprocess.Popen(
            [*PYTEST, "tests/e2e_real"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ALIASROLL_REQUIRE_REAL_NODE": "1"},
        )
    print(
        f"real-pod tier (tests/e2e_real) started beside the others; its output goes to "
        f"{REAL_LOG.relative_to(REPO)} and is shown when it ends",
        flush=True,
    )
    try:
        if subprocess.run(["make", "--no-print-directory", "lint"], cwd=REPO).returncode != 0:
            print("lint failed: stopping the real-pod tier", flush=True)
            real.send_signal(signal.SIGINT)
            real.wait()
            return 1
        rest = subprocess.run([*PYTEST, "tests/unit", "tests/integration", "tests/e2e"], cwd=REPO).returncode
        if real.poll() is None:
            print(f"waiting for the real-pod tier ({time.monotonic() - started:.0f} s so far)", flush=True)
        real_code = real.wait()
    except KeyboardInterrupt:
        print("\ninterrupted: waiting for the real-pod tier to stop what it started ...", flush=True)
        real.wait()
        return 130
    print(f"\n{' real-pod tier (tests/e2e_real) ':=^100}", flush=True)
    with REAL_LOG.open("rb") as log:
        shutil.copyfileobj(log, sys.stdout.buffer)
    sys.stdout.flush()
    print(
        f"\nunit + integration + end-to-end: {verdict(rest)}; real pods: {verdict(real_code)} "
        f"({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return 0 if rest == 0 and real_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
