"""The answers of a steady load through a Service on the real node, and an alias move timed by them:
one implementation for the real-node tests (tests/e2e_real) and the benchmarks (bench/).

`Stream` runs tests/support/load.py inside the node's network namespace (open loop, a new connection
per request, so kube-proxy picks a pod per request) and reads its answers as they come: one dict per
request, {"t": its start on CLOCK_MONOTONIC (the caller's clock too), "ms", "status", "version" (the
X-Model-Version header), "error"}. `timed` tells from those answers when a move's target took over:
  first_new   the first answer from the target
  all_new     the start of the first request after the last answer not from the target (another
              version's, or a failed request): from then on every answer comes from the target
both in seconds after the move. `settle` waits until `SETTLED` seconds of answers come from the
target only, then times the move.

`FirstSeen` polls something (a resource's status, the registry) in a thread of its own and keeps the
moment each named state was first seen; `log_misbehaving` registers the test model that fails a share
of its requests (tests/e2e_real/models/misbehaving.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from support import load

#: Seconds of answers all from the target after which a move counts as over.
SETTLED = 3.0
MISBEHAVING = Path(__file__).resolve().parents[1] / "e2e_real" / "models" / "misbehaving.py"

Answer = dict[str, Any]


class Node(Protocol):
    """What of localkube.RealNode a stream needs: a command line run inside its network namespace."""

    def nsenter_argv(self, *argv: str) -> list[str]: ...


class Stream:
    """tests/support/load.py inside the node's namespace against `address` for the length of a `with`
    block (or until `stop`), its answers written to `path` and read incrementally."""

    def __init__(self, node: Node, address: str, path: Path, *, rate: float, seconds: float = 900) -> None:
        self.path = path
        self.rate = rate
        self.process = subprocess.Popen(
            node.nsenter_argv(
                *load.command(address, rate=rate, seconds=seconds, out=str(path), monotonic=True)
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.answers: list[Answer] = []
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()

    def __enter__(self) -> Stream:
        self.running()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def running(self, seconds: float = 1.0, timeout: float = 30) -> None:
        """Until `seconds` worth of answers is in: the load runs before what follows."""
        deadline = time.monotonic() + timeout
        while len(self.read()) < self.rate * seconds:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise TimeoutError(f"the load's first {seconds:g} s of answers did not come ({self.path})")
            time.sleep(0.1)

    def stop(self) -> None:
        """The load stopped (never left running, whatever the caller makes of it); answers kept."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.read()

    def read(self) -> list[Answer]:
        """Every answer so far, by start (a line still being written waits for the next read)."""
        with self._lock:
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                self._offset += len(data)
                lines = (self._partial + data).split(b"\n")
                self._partial = lines.pop()
                fresh = [json.loads(line) for line in lines if line.strip()]
                if fresh:
                    self.answers = sorted(self.answers + fresh, key=lambda a: a["t"])
            return list(self.answers)

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.read() if a["t"] >= moment]

    def failed(self, since: float = float("-inf")) -> list[Answer]:
        return [a for a in self.read() if a["t"] >= since and a["status"] != 200]


def served_by(answer: Answer, version: str) -> bool:
    return answer["status"] == 200 and answer.get("version") == version


@dataclass
class Move:
    """One alias move timed by the answers (seconds after the move)."""

    target: str
    first_new: float
    all_new: float
    answers: int
    failed: int
    steps: dict[str, Any] = field(default_factory=dict)


def quiet_for(answers: list[Answer], moved: float, target: str) -> float:
    """Seconds of answers from `target` only at the end of `answers` (those from `moved` on)."""
    if not answers:
        return 0.0
    old = [a["t"] for a in answers if not served_by(a, target)]
    return float(answers[-1]["t"] - (old[-1] if old else moved))


def timed(answers: list[Answer], moved: float, target: str) -> Move:
    """The move to `target` made at `moved`, from the answers since then (the target's among them)."""
    old = [a["t"] for a in answers if not served_by(a, target)]
    last_old = old[-1] if old else moved
    first = next(a["t"] for a in answers if served_by(a, target))
    after = next(a["t"] for a in answers if a["t"] > last_old)
    return Move(
        target=target,
        first_new=first - moved,
        all_new=after - moved,
        answers=len(answers),
        failed=sum(a["status"] != 200 for a in answers),
    )


def settle(stream: Stream, moved: float, target: str, *, timeout: float, settled: float = SETTLED) -> Move:
    """Until `settled` seconds of answers come from `target` only, then the move made at `moved`
    timed; TimeoutError after `timeout` seconds."""
    while True:
        answers = stream.since(moved)
        if quiet_for(answers, moved, target) > settled:
            return timed(answers, moved, target)
        if time.monotonic() - moved > timeout:
            raise TimeoutError(f"the move to {target} did not settle in {timeout:.0f} s")
        time.sleep(0.1)


class FirstSeen:
    """`read()` polled every `every` seconds in a thread of its own; `first[state]` is the moment
    (CLOCK_MONOTONIC, the read's middle) each of `states` first held of what it returned. A read
    that raises OSError or AssertionError is skipped."""

    def __init__(
        self,
        read: Callable[[], Any],
        states: Mapping[str, Callable[[Any], bool]],
        *,
        every: float = 0.1,
    ) -> None:
        self.first: dict[str, float] = {}
        self._read, self._states, self._every = read, dict(states), every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FirstSeen:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            began = time.monotonic()
            try:
                found = self._read()
            except (OSError, AssertionError):
                continue
            now = (began + time.monotonic()) / 2
            for state, holds in self._states.items():
                if state not in self.first and holds(found):
                    self.first[state] = now


def log_misbehaving(tracking_uri: str, model: str, **config: float) -> str:
    """A new version of `model` that answers 0.5 to everything, raising on `fail_share` of the
    requests or `delay_seconds` late, as its model_config says; its number."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MISBEHAVING),
            model_config=dict(config),
            registered_model_name=model,
            pip_requirements=[f"mlflow-skinny=={mlflow.__version__}"],
        )
    return str(info.registered_model_version)
