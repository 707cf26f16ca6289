"""The holdout gate (spec.canary.gate), operator side: its spec, its Job, the verdict read from its
evaluator's message (hostile input), and the canary run's turn through it. The random histories are
in test_canary_model.py; these are the named cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aliasroll import reasons
from aliasroll.errors import InvalidSpec
from aliasroll.planning import canary
from aliasroll.planning import gate as holdout
from aliasroll.planning.canary import Gates, Phase, Registry
from aliasroll.planning.state import ObservedGateJob, ServedVersion
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.serving.gate import message as evaluator
from aliasroll.spec import ModelDeploymentSpec, ResourceRef, parse_spec

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
OWNER = ResourceRef(namespace="ml", name="sentiment", uid="uid-1", generation=1)
GATE = {
    "data": "runs:/0a1b2c/holdout.parquet",
    "target": "label",
    "modelType": "classifier",
    "thresholds": [
        {"metric": "accuracy_score", "higherIsBetter": True, "threshold": 0.8, "minRelativeChange": 0},
        {"metric": "log_loss", "higherIsBetter": False, "threshold": 0.7},
    ],
}


def spec(gate: dict[str, Any] | None = GATE, **canary_fields: Any) -> ModelDeploymentSpec:
    canary_spec: dict[str, Any] = {"steps": [{"weight": 20, "duration": "1m"}], **canary_fields}
    if gate is not None:
        canary_spec["gate"] = gate
    return parse_spec(
        {
            "model": {"name": "sentiment"},
            "registry": {"trackingUri": "http://mlflow:5000"},
            "canary": canary_spec,
        }
    )


def registry(canary_alias: str = "2", production: str = "1") -> Registry:
    return Registry(canary_alias=canary_alias, production_alias=production, production_settled=production)


def message(verdict: str, reason: str, metrics: tuple[evaluator.MetricReport, ...] = ()) -> str:
    report = evaluator.Report(verdict, reason, metrics, run_id="0a1b2c3d")
    return evaluator.encode(report).decode()


MET = (
    evaluator.MetricReport("accuracy_score", 0.91, 0.88, 0.88, True),
    evaluator.MetricReport("log_loss", 0.3, 0.35, 0.7, True),
)
NOT_MET = (
    evaluator.MetricReport("accuracy_score", 0.71, 0.88, 0.88, False),
    evaluator.MetricReport("log_loss", 0.3, 0.35, 0.7, True),
)


# ------------------------------------------------------------------------------------ the spec


def test_the_gate_is_parsed_with_its_defaults() -> None:
    gate = spec().canary.gate  # type: ignore[union-attr]
    assert gate is not None
    assert (gate.target, gate.model_type.value, gate.timeout_seconds, gate.dry_run) == (
        "label",
        "classifier",
        600,
        False,
    )
    assert [t.metric for t in gate.thresholds] == ["accuracy_score", "log_loss"]
    assert gate.thresholds[0].min_relative_change == 0


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"data": "https://elsewhere.example/holdout.csv"}, "spec.canary.gate.data"),
        ({"data": "runs:/0a1b2c/holdout.json"}, "spec.canary.gate.data"),
        ({"target": " "}, "spec.canary.gate.target"),
        ({"modelType": "ranker"}, "spec.canary.gate.modelType"),
        ({"thresholds": []}, "spec.canary.gate.thresholds"),
        (
            {"thresholds": [{"metric": "accuracy_score", "higherIsBetter": True}]},
            "spec.canary.gate.thresholds[0]",
        ),
        (
            {"thresholds": [{"metric": "accuracy_score", "threshold": 0.8}]},
            "spec.canary.gate.thresholds[0].higherIsBetter",
        ),
        (
            {"thresholds": [{"metric": "a b", "higherIsBetter": True, "threshold": 1}]},
            "spec.canary.gate.thresholds[0].metric",
        ),
        (
            {"thresholds": [{"metric": "f1", "higherIsBetter": True, "minAbsoluteChange": 0}]},
            "spec.canary.gate.thresholds[0].minAbsoluteChange",
        ),
        (
            {"thresholds": [{"metric": "f1", "higherIsBetter": True, "minRelativeChange": 1.5}]},
            "spec.canary.gate.thresholds[0].minRelativeChange",
        ),
        ({"thresholds": [GATE["thresholds"][1], GATE["thresholds"][1]]}, "spec.canary.gate.thresholds"),
        ({"timeout": "2h"}, "spec.canary.gate.timeout"),
        ({"dryRun": "yes"}, "spec.canary.gate.dryRun"),
    ],
)
def test_a_bad_gate_names_its_field(edit: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        spec({**GATE, **edit})
    assert raised.value.field_path == field


def test_the_vocabularies_of_the_operator_and_the_evaluator_are_one() -> None:
    assert evaluator.REASONS - {evaluator.REASON_PASSED} == holdout.REASONS
    assert set(holdout.REASON_TEXT) >= holdout.REASONS | {holdout.JOB_KILLED, holdout.UNREADABLE}
    assert holdout.JOB_DEADLINE in holdout.REASONS


# ------------------------------------------------------------------------------------ the Job


def test_the_job_is_the_serving_image_hardened_without_api_access_or_retry() -> None:
    gated = spec()
    assert gated.canary is not None
    assert gated.canary.gate is not None
    job = holdout.job(
        owner=OWNER,
        spec=gated,
        gate=gated.canary.gate,
        candidate=ServedVersion(model="sentiment", version="2"),
        baseline="1",
        defaults=WorkloadDefaults(image="aliasroll/serving:test"),
    )
    assert job["kind"] == "Job"
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["image"] == "aliasroll/serving:test"
    assert container["command"] == ["python", "-m", "aliasroll.serving.gate"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["terminationMessagePolicy"] == "File"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["ALIASROLL_GATE_CANDIDATE_URI"] == "models:/sentiment/2"
    assert env["ALIASROLL_GATE_BASELINE_URI"] == "models:/sentiment/1"
    assert json.loads(env["ALIASROLL_GATE_THRESHOLDS"]) == {
        "accuracy_score": {"greaterIsBetter": True, "threshold": 0.8, "minRelativeChange": 0},
        "log_loss": {"greaterIsBetter": False, "threshold": 0.7},
    }
    assert env["ALIASROLL_GATE_DEADLINE_SECONDS"] == "600"
    # The evaluator reads its settings as the Job gives them (aliasroll/serving/gate/config.py).
    from aliasroll.serving.gate.config import parse_thresholds

    assert [bound.metric for bound in parse_thresholds(env["ALIASROLL_GATE_THRESHOLDS"])] == [
        "accuracy_score",
        "log_loss",
    ]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert "aliasroll.io/track" not in labels, "a gate pod is never in a Service"


def test_the_job_name_fits_a_label_and_changes_with_what_it_judges() -> None:
    gate = spec().canary.gate  # type: ignore[union-attr]
    assert gate is not None
    name = holdout.job_name("m" * 60, "12", gate, "1")
    assert len(name) <= 63
    assert name.endswith(f"-gate-v12-{holdout.digest(gate, '1')}")
    assert holdout.digest(gate, "1") != holdout.digest(gate, "3")
    other = spec({**GATE, "timeout": "5m"}).canary.gate  # type: ignore[union-attr]
    assert other is not None
    assert holdout.digest(other, "1") != holdout.digest(gate, "1")


# ------------------------------------------------------------------------------------ the verdict


def verdict(text: str | None, *, deadline: bool = False) -> holdout.GateResult:
    gate = spec().canary.gate  # type: ignore[union-attr]
    assert gate is not None
    return holdout.verdict("job", text, gate=gate, deadline_exceeded=deadline)


def test_the_evaluators_verdicts_are_read() -> None:
    passed = verdict(message(evaluator.PASSED, evaluator.REASON_PASSED, MET))
    assert (passed.verdict, passed.reason, passed.run_id) == (
        holdout.Verdict.PASSED,
        "ThresholdsMet",
        "0a1b2c3d",
    )
    failed = verdict(message(evaluator.FAILED, evaluator.REASON_FAILED, NOT_MET))
    assert failed.verdict is holdout.Verdict.FAILED
    assert failed.describe() == "accuracy_score 0.71 (production 0.88, bound 0.88)"
    error = verdict(message(evaluator.ERROR, evaluator.MISSING_COLUMN))
    assert (error.verdict, error.reason) == (holdout.Verdict.ERROR, "MissingColumn")
    assert "spec.canary.gate.target" in error.describe()


@pytest.mark.parametrize(
    ("text", "deadline", "reason"),
    [
        (None, False, holdout.JOB_KILLED),
        ("", False, holdout.JOB_KILLED),
        (None, True, holdout.JOB_DEADLINE),
        ("{not json", False, holdout.UNREADABLE),
        ("[1, 2]", False, holdout.UNREADABLE),
        (json.dumps({"verdict": "maybe", "reason": "ThresholdsMet"}), False, holdout.UNREADABLE),
        (json.dumps({"verdict": "error", "reason": "<script>"}), False, holdout.UNREADABLE),
        # A pass that judged only some of the spec's metrics, or names others.
        (
            json.dumps({"verdict": "passed", "reason": "ThresholdsMet", "metrics": []}),
            False,
            holdout.UNREADABLE,
        ),
        (
            json.dumps(
                {
                    "verdict": "passed",
                    "metrics": [{"name": "accuracy_score", "ok": True}, {"name": "x", "ok": True}],
                }
            ),
            False,
            holdout.UNREADABLE,
        ),
        # A failure that names no failed metric of the spec's.
        (
            json.dumps(
                {
                    "verdict": "failed",
                    "reason": "ThresholdsNotMet",
                    "metrics": [{"name": "other", "ok": False}],
                }
            ),
            False,
            holdout.UNREADABLE,
        ),
        ("x" * 5000, False, holdout.UNREADABLE),
    ],
)
def test_a_message_that_is_not_the_evaluators_is_an_error_never_a_pass(
    text: str | None, deadline: bool, reason: str
) -> None:
    result = verdict(text, deadline=deadline)
    assert (result.verdict, result.reason) == (holdout.Verdict.ERROR, reason)


def test_numbers_and_ids_from_the_message_are_checked() -> None:
    body = {
        "verdict": "failed",
        "reason": "ThresholdsNotMet",
        "runId": "../../etc",
        "metrics": [
            {
                "name": "accuracy_score",
                "candidate": "0.5; rm -rf",
                "baseline": float("inf"),
                "bound": 0.8,
                "ok": False,
            },
            {"name": "log_loss", "candidate": True, "ok": True},
        ],
    }
    result = verdict(json.dumps(body))
    assert result.run_id is None
    assert result.metrics[0] == holdout.GateMetric("accuracy_score", None, None, 0.8, False)
    assert result.metrics[1].candidate is None


# ------------------------------------------------------------------------------------ the run


def advance(
    gated: ModelDeploymentSpec,
    previous: canary.CanaryRun | None,
    jobs: tuple[ObservedGateJob, ...] = (),
    reg: Registry | None = None,
    now: datetime = NOW,
) -> canary.Advance:
    return canary.advance(
        spec=gated,
        previous=previous,
        registry=reg or registry(),
        analysis=None,
        now=now,
        gates=Gates(owner=OWNER.name, jobs=jobs),
    )


def ended(run: canary.CanaryRun, text: str | None, *, deadline: bool = False) -> ObservedGateJob:
    assert run.gate is not None
    return ObservedGateJob(
        name=run.gate.job,
        version=run.version,
        digest=run.gate.digest,
        finished=True,
        deadline_exceeded=deadline,
        message=text,
    )


def test_a_new_version_under_a_gate_is_judged_before_any_request() -> None:
    gated = spec()
    started = advance(gated, None)
    run = started.run
    assert run is not None
    assert run.phase is Phase.GATING
    assert run.gate is not None
    assert run.gate.baseline == "1"
    assert run.gate.job.startswith("sentiment-gate-v2-")
    assert [event.reason for event in started.events] == [reasons.GATE_STARTED]
    assert canary.weight(gated, run) == 0
    # Still running: nothing changes, no event again.
    again = advance(gated, run, (ObservedGateJob(run.gate.job, "2", run.gate.digest, finished=False),))
    assert again.run == run
    assert again.events == ()


def test_a_passed_gate_starts_the_first_step() -> None:
    gated = spec()
    run = advance(gated, None).run
    assert run is not None
    passed = advance(gated, run, (ended(run, message(evaluator.PASSED, evaluator.REASON_PASSED, MET)),))
    assert passed.run is not None
    assert passed.run.phase is Phase.PROGRESSING
    assert passed.run.gate is not None
    assert passed.run.gate.cleared
    assert [event.reason for event in passed.events] == [reasons.GATE_PASSED]
    assert "MLflow run 0a1b2c3d" in passed.events[0].message
    assert canary.weight(gated, passed.run) == 20
    # Read back from status, it stays cleared.
    entry = canary.to_status(passed.run, gated.canary)  # type: ignore[arg-type]
    assert canary.from_status(entry) == passed.run


@pytest.mark.parametrize(
    ("text", "deadline", "event", "reason"),
    [
        (
            message(evaluator.FAILED, evaluator.REASON_FAILED, NOT_MET),
            False,
            reasons.GATE_FAILED,
            "ThresholdsNotMet",
        ),
        (message(evaluator.ERROR, evaluator.BAD_DATA_URI), False, reasons.GATE_ERROR, "BadDataURI"),
        (None, True, reasons.GATE_ERROR, "Timeout"),
        (None, False, reasons.GATE_ERROR, "EvaluatorKilled"),
    ],
)
def test_a_failed_or_unjudged_gate_aborts_the_run_before_any_request(
    text: str | None, deadline: bool, event: str, reason: str
) -> None:
    gated = spec(onAbort="removeAlias")
    run = advance(gated, None).run
    assert run is not None
    result = advance(gated, run, (ended(run, text, deadline=deadline),))
    assert result.run is not None
    assert result.run.phase is Phase.ABORTED
    assert result.run.gate is not None
    assert result.run.gate.reason == reason
    assert not result.run.gate.cleared
    assert result.run.alias_write is canary.AliasWrite.PLANNED, "onAbort removeAlias applies"
    assert [e.reason for e in result.events] == [event]
    assert [e.type for e in result.events] == ["Warning"]
    assert canary.weight(gated, result.run) == 0


def test_a_dry_run_records_the_failure_and_goes_on() -> None:
    gated = spec({**GATE, "dryRun": True})
    run = advance(gated, None).run
    assert run is not None
    result = advance(gated, run, (ended(run, message(evaluator.FAILED, evaluator.REASON_FAILED, NOT_MET)),))
    assert result.run is not None
    assert result.run.phase is Phase.PROGRESSING
    assert result.run.gate is not None
    assert result.run.gate.cleared
    assert result.run.gate.verdict is holdout.Verdict.FAILED
    assert "dryRun" in result.events[0].message


def test_production_moving_while_the_gate_runs_starts_a_job_against_the_new_baseline() -> None:
    gated = spec()
    run = advance(gated, None).run
    assert run is not None
    assert run.gate is not None
    moved = advance(
        gated,
        run,
        (ended(run, message(evaluator.PASSED, evaluator.REASON_PASSED, MET)),),
        registry(production="3"),
    )
    assert moved.run is not None
    assert moved.run.phase is Phase.GATING
    assert moved.run.gate is not None
    assert moved.run.gate.baseline == "3"
    assert moved.run.gate.job != run.gate.job
    assert [event.reason for event in moved.events] == [reasons.GATE_STARTED]


def test_a_human_promoting_the_version_while_it_is_judged_wins() -> None:
    gated = spec()
    run = advance(gated, None).run
    promoted = advance(
        gated, run, (), Registry(canary_alias="2", production_alias="2", production_settled="1")
    )
    assert promoted.run is not None
    assert promoted.run.phase is Phase.PROMOTING


def test_no_registry_answer_decides_nothing_and_keeps_the_job() -> None:
    gated = spec()
    run = advance(gated, None).run
    assert run is not None
    stale = Registry(canary_alias="2", production_alias="1", production_settled="1", fresh=False)
    result = advance(
        gated, run, (ended(run, message(evaluator.PASSED, evaluator.REASON_PASSED, MET)),), stale
    )
    assert result.run == run


def test_the_gate_removed_from_the_spec_lets_the_run_go_on() -> None:
    run = advance(spec(), None).run
    assert run is not None
    result = advance(spec(gate=None), run)
    assert result.run is not None
    assert result.run.phase is Phase.PROGRESSING


def test_a_gate_added_to_a_run_that_serves_judges_the_next_version() -> None:
    ungated = advance(spec(gate=None), None).run
    assert ungated is not None
    assert ungated.gate is None
    result = advance(spec(), ungated, now=NOW + timedelta(seconds=5))
    assert result.run is not None
    assert result.run.phase is not Phase.GATING
    assert canary.weight(spec(), result.run) == 20
    # The next version is judged.
    nxt = advance(spec(), result.run, reg=registry(canary_alias="3"))
    assert nxt.run is not None
    assert nxt.run.phase is Phase.GATING
