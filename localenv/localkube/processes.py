"""Processes of one local cluster: started in their own session with a log file and a PID file each,
recognised later only by that PID plus a marker in their environment, stopped by PID (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Set in every process's environment; a saved PID is only signalled when its process carries it.
OWNER_ENV = "ALIASROLL_LOCALCLUSTER_DIR"


def process_state(pid: int) -> str | None:
    """The one-letter /proc state of ``pid`` (e.g. "S", "Z"), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces; the state follows the last ")".
    return stat.rsplit(")", 1)[1].split()[0]


def owned_by(pid: int, state_dir: Path, exe: str | None) -> bool:
    """Whether ``pid`` is live (not a zombie), carries the marker of ``state_dir``, and (when given)
    runs a binary named ``exe``."""
    state = process_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    marker = f"{OWNER_ENV}={state_dir}".encode()
    return marker in environ and (exe is None or Path(argv0).name == exe)


class Processes:
    """The processes started for one state dir: ``logs/<name>.log`` and ``pids/<name>.pid`` each.

    A PID file holds the PID and the name of the binary the process runs (which differs from the
    component's name for e.g. socat bridges, and from argv[0] of the spawn for ``nsenter ... BINARY``,
    which execs its target and so keeps its PID).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "pids"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.pids_dir / f"{name}.pid"

    def _saved(self, name: str) -> tuple[int, str | None] | None:
        try:
            fields = self._pid_file(name).read_text().split()
            return int(fields[0]), (fields[1] if len(fields) > 1 else None)
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def saved_pid(self, name: str) -> int | None:
        saved = self._saved(name)
        return saved[0] if saved else None

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        exe: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as component ``name``; ``exe``: the binary it ends up running (default argv[0])."""
        full_env = dict(os.environ)
        full_env.pop("KUBECONFIG", None)
        full_env.update(env or {})
        full_env[OWNER_ENV] = str(self.state_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.pids_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file(name).open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.state_dir,
                env=full_env,
                start_new_session=True,
            )
        self._procs[name] = proc
        self._pid_file(name).write_text(f"{proc.pid} {exe or Path(argv[0]).name}\n")
        return proc

    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is not None:
            return proc.poll() is None
        saved = self._saved(name)
        return saved is not None and owned_by(saved[0], self.state_dir, saved[1])

    def exit_code(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return proc.returncode if proc is not None else None

    def terminate(self, names: Sequence[str], grace: float = 15.0) -> dict[str, int]:
        """SIGTERM, wait up to ``grace`` s, SIGKILL; returns the components still alive after all that.

        Stopped components lose their PID file; our own children are reaped."""
        targets: dict[str, int] = {}
        for name in names:
            proc = self._procs.get(name)
            pid = proc.pid if proc is not None else self.saved_pid(name)
            if pid is not None and self.alive(name):
                targets[name] = pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if not targets:
                break
            for pid in targets.values():
                # Each component leads its own session and process group: signal the whole group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while targets and time.monotonic() < deadline:
                targets = {c: p for c, p in targets.items() if self.alive(c)}
                if targets:
                    time.sleep(0.05)
        for name in names:
            proc = self._procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)  # reap our children
            if name not in targets:
                self._pid_file(name).unlink(missing_ok=True)
        return targets
