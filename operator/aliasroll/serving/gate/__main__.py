"""`python -m aliasroll.serving.gate`: the holdout gate's Job (docs/gate.md).

Exit codes: 0 for a verdict, passed or failed (the termination message says which); 1 when there is
none (an error: the message's reason says which); 2 for a setting the gate cannot run with
(InvalidConfig). The whole gate runs within ALIASROLL_GATE_DEADLINE_SECONDS: past it the message says
Timeout, the evaluation run (if one was started) is marked KILLED, and the process exits at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from aliasroll.serving.gate.config import GateConfig
from aliasroll.serving.gate.message import ERROR, INTERNAL_ERROR, TIMEOUT, GateError, Report, write
from aliasroll.serving.redaction import redact, secret_values

log = logging.getLogger("aliasroll.serving.gate")

# MLflow's own HTTP defaults (120 s, 7 retries) would spend a short deadline on one call.
HTTP_TIMEOUT_SECONDS = 60
HTTP_RETRIES = 2
# How long a timed-out gate waits to mark its evaluation run KILLED.
KILL_GRACE_SECONDS = 5.0


def _say(text: str) -> str:
    return redact(text, secret_values(os.environ))[:2000]


def prepare(config: GateConfig) -> None:
    """The process' environment: the evaluation packages on the path (after the server's own), every
    temporary file in scratch, MLflow's HTTP calls bounded, matplotlib without a display."""
    if config.packages_dir.is_dir() and str(config.packages_dir) not in sys.path:
        sys.path.append(str(config.packages_dir))
    config.scratch_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TMPDIR", str(config.scratch_dir))
    os.environ.setdefault("MPLCONFIGDIR", str(config.scratch_dir))
    os.environ.setdefault("MPLBACKEND", "Agg")
    timeout = int(max(1, min(HTTP_TIMEOUT_SECONDS, config.deadline_seconds)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))


def _mark_killed(run_id: str) -> None:
    def kill() -> None:
        from mlflow import MlflowClient

        try:
            MlflowClient().set_terminated(run_id, status="KILLED")
        except Exception as error:
            log.warning("cannot mark the evaluation run KILLED: %s", _say(str(error)))

    worker = threading.Thread(target=kill, name="gate-kill", daemon=True)
    worker.start()
    worker.join(KILL_GRACE_SECONDS)


def run_with_deadline(config: GateConfig, gate: Any) -> tuple[Report, bool]:
    """(the report, whether the deadline passed). `gate(config, on_run)` runs in a daemon thread."""
    outcome: list[Report] = []
    run_ids: list[str] = []

    def work() -> None:
        try:
            outcome.append(gate(config, run_ids.append))
        except GateError as error:
            log.error("the gate has no verdict (%s): %s", error.reason, _say(str(error)))
            run_id = run_ids[-1] if run_ids else None
            outcome.append(Report.error(error, run_id=run_id, dry_run=config.dry_run))
        except BaseException as error:  # a bug of ours, or of a library: still a report, in our words
            log.error("the gate stopped on an unexpected %s: %s", type(error).__name__, _say(str(error)))
            run_id = run_ids[-1] if run_ids else None
            outcome.append(Report(ERROR, INTERNAL_ERROR, run_id=run_id, dry_run=config.dry_run))

    worker = threading.Thread(target=work, name="gate", daemon=True)
    worker.start()
    worker.join(config.deadline_seconds)
    if outcome:
        return outcome[0], False
    log.error("the gate did not finish within %.0f s", config.deadline_seconds)
    run_id = run_ids[-1] if run_ids else None
    if run_id is not None:
        _mark_killed(run_id)
    return Report(ERROR, TIMEOUT, run_id=run_id, dry_run=config.dry_run), True


def _finish(report: Report) -> int:
    try:
        write(report)
    except OSError as error:
        log.error("cannot write the termination message: %s", error)
    log.info("gate %s (%s), run %s", report.verdict, report.reason, report.run_id or "none")
    for metric in report.metrics:
        log.info(
            "  %s: candidate %s, baseline %s, bound %s, %s",
            metric.name,
            metric.candidate,
            metric.baseline,
            metric.bound,
            "ok" if metric.ok else "NOT MET",
        )
    return report.exit_code


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = GateConfig.from_env()
    except GateError as error:
        log.error("%s", _say(str(error)))
        return _finish(Report.error(error))
    prepare(config)
    from aliasroll.serving.gate.run import gate

    report, timed_out = run_with_deadline(config, gate)
    code = _finish(report)
    if timed_out:  # the gate's thread may be inside any call: leave without waiting for it
        logging.shutdown()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
