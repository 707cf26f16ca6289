"""The holdout gate (spec.canary.gate): the Job that judges a new @canary version before any request,
and what its end says. Pure, like the rest of the planner.

One Job per (version, gate): its name carries the candidate version and a digest of what it judges
with (the gate's settings and @production's version, the baseline), so an edit of the thresholds or a
move of @production while the gate runs starts a Job of its own and the old one is pruned. The Job runs
the serving image's evaluator (`python -m aliasroll.serving.gate`) in a pod hardened as the serving
pods are, with the pods' MLflow credentials, no API token, no retry (backoffLimit 0) and the gate's
timeout as its activeDeadlineSeconds.

The evaluator reports in its termination message: a small JSON object of a fixed schema. The message
comes from a pod that ran the tenant's model, so `verdict` reads it as hostile input: the verdict and
the reason from fixed vocabularies, the metric names only those the spec named, numbers only. A Job
that ended without a readable message (killed, out of memory, past its deadline) is an error with the
reason its own state gives, never a pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aliasroll.labels import LABEL_COMPONENT, LABEL_GATE_DIGEST, LABEL_ROLE, LABEL_VERSION
from aliasroll.planning.state import ServedVersion
from aliasroll.planning.status import GateStatus
from aliasroll.planning.workloads import (
    CONTAINER_NAME,
    SCRATCH_PATH,
    Manifest,
    WorkloadDefaults,
    common_labels,
    hardened_container,
    metadata,
    pod_credentials_secret,
    pod_spec,
)
from aliasroll.spec import GateSpec, ModelDeploymentSpec, ResourceRef, Threshold

ROLE = "gate"  # the Job's aliasroll.io/role label
EVALUATOR = ["python", "-m", "aliasroll.serving.gate"]
# The evaluator's own exit: the verdict is in its message. The kubelet caps a message at 4096 bytes.
MAX_MESSAGE_BYTES = 4096
MAX_SUMMARY = 512  # characters of the metrics' summary kept in status


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # MLflow's validation found a threshold not met
    ERROR = "error"  # the gate could not judge


# Why a gate failed, or could not judge: the evaluator's vocabulary (aliasroll/serving/gate/message.py;
# a test holds the two together), and the Job's own ends below.
REASONS = frozenset(
    {
        "ThresholdsNotMet",
        "InvalidConfig",
        "BadDataURI",
        "DataTooLarge",
        "BadData",
        "MissingColumn",
        "ModelLoadFailed",
        "EvaluationFailed",
        "UnknownMetric",
        "TrackingFailed",
        "Timeout",
        "InternalError",
    }
)
# What each reason means, for messages and events.
REASON_TEXT = {
    "ThresholdsMet": "every threshold was met",
    "ThresholdsNotMet": "a threshold was not met",
    "InvalidConfig": "the evaluator refused its settings (an operator and image of different releases?)",
    "BadDataURI": "the holdout could not be downloaded from spec.canary.gate.data",
    "DataTooLarge": "the holdout is larger than the evaluator reads",
    "BadData": "the holdout is not a CSV or Parquet table the evaluator can read",
    "MissingColumn": "the holdout has no column named spec.canary.gate.target",
    "ModelLoadFailed": "a model version could not be loaded (the Job's log says which)",
    "EvaluationFailed": "MLflow's evaluation failed (a model that cannot score the holdout?)",
    "UnknownMetric": "MLflow's evaluation gave no metric of a name spec.canary.gate.thresholds uses",
    "TrackingFailed": "the evaluation run could not be logged to the registry's tracking server",
    "Timeout": "the evaluation passed spec.canary.gate.timeout",
    "InternalError": "the evaluator failed (its log says why)",
    "EvaluatorKilled": "the evaluator ended without a verdict (killed, out of memory, or its pod deleted)",
    "UnreadableVerdict": "the evaluator's verdict is not one the operator reads",
}
# The Job's ends without a readable message, by what the Job and its pod say.
JOB_DEADLINE = "Timeout"  # activeDeadlineSeconds passed (the Job's condition reason DeadlineExceeded)
JOB_KILLED = "EvaluatorKilled"  # ended without a message (OOMKilled, evicted, a crash before writing)
UNREADABLE = "UnreadableVerdict"  # a message that is not the evaluator's schema


@dataclass(frozen=True)
class GateMetric:
    metric: str
    candidate: float | None
    baseline: float | None
    bound: float | None
    ok: bool


@dataclass(frozen=True)
class GateResult:
    """A finished gate Job's verdict, read from its pod (kube/observe.py) and judged here."""

    job: str
    verdict: Verdict
    reason: str
    metrics: tuple[GateMetric, ...] = ()
    run_id: str | None = None

    def summary(self) -> str:
        """The failed metrics (or all) as `accuracy_score 0.71 (production 0.78, bound 0.80)`."""
        shown = [metric for metric in self.metrics if not metric.ok] or list(self.metrics)
        return "; ".join(_metric_text(metric) for metric in shown)[:MAX_SUMMARY]

    def describe(self) -> str:
        """The verdict in words: the metrics judged, or why none could be."""
        if self.verdict is Verdict.ERROR:
            return f"{REASON_TEXT.get(self.reason, self.reason)} ({self.reason})"
        return self.summary() or REASON_TEXT.get(self.reason, self.reason)


@dataclass(frozen=True)
class GateRecord:
    """A run's gate, as status.canary.gate keeps it: the Job's digest and baseline while it runs, then
    the verdict. `cleared`: the run may take requests (passed, or recorded in a dry run)."""

    job: str
    digest: str
    baseline: str | None  # @production's version it is judged against (None: none)
    verdict: Verdict | None = None  # None: the Job runs
    reason: str = ""
    summary: str = ""
    run_id: str | None = None
    cleared: bool = False

    def to_status(self) -> GateStatus:
        entry: GateStatus = {"job": self.job, "digest": self.digest, "cleared": self.cleared}
        if self.baseline is not None:
            entry["baseline"] = self.baseline
        if self.verdict is not None:
            entry |= {"verdict": self.verdict.value, "reason": self.reason}
        if self.summary:
            entry["summary"] = self.summary
        if self.run_id is not None:
            entry["runId"] = self.run_id
        return entry

    @classmethod
    def from_status(cls, entry: object) -> GateRecord | None:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("digest"), str):
            return None
        if not isinstance(entry.get("job"), str):
            return None
        try:
            said = Verdict(str(entry["verdict"])) if entry.get("verdict") else None
        except ValueError:
            said = None
        return cls(
            job=entry["job"],
            digest=entry["digest"],
            baseline=str(entry["baseline"]) if entry.get("baseline") else None,
            verdict=said,
            reason=str(entry.get("reason") or ""),
            summary=str(entry.get("summary") or ""),
            run_id=_run_id(entry.get("runId")),
            cleared=entry.get("cleared") is True and said is not None,
        )


def digest(gate: GateSpec, baseline: str | None) -> str:
    """Eight hex digits of what a gate judges with: its settings and the baseline version."""
    text = json.dumps([_settings(gate), baseline], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def job_name(owner: str, version: str, gate: GateSpec, baseline: str | None) -> str:
    # A Job's name becomes its pods' job-name label (63 characters at most): the owner's name is
    # cut to leave room for the version and the digest, which tell Jobs apart.
    tail = f"-gate-v{version}-{digest(gate, baseline)}"
    return f"{owner[: max(1, 63 - len(tail))].rstrip('-.')}{tail}"


def job(
    *,
    owner: ResourceRef,
    spec: ModelDeploymentSpec,
    gate: GateSpec,
    candidate: ServedVersion,
    baseline: str | None,
    defaults: WorkloadDefaults,
) -> Manifest:
    """The Job judging `candidate` against @production's `baseline` (None: absolute bounds only)."""
    labels = {
        **common_labels(owner),
        LABEL_COMPONENT: "holdout-gate",
        LABEL_ROLE: ROLE,
        LABEL_VERSION: candidate.version,
        LABEL_GATE_DIGEST: digest(gate, baseline),
    }
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.serving.image or defaults.image,
        "command": EVALUATOR,
        "env": _env(spec, gate, candidate, baseline),
        "securityContext": hardened_container(),
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        "terminationMessagePolicy": "File",
    }
    if spec.serving.resources:
        container["resources"] = dict(spec.serving.resources)
    if secret := pod_credentials_secret(spec):
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    pod = pod_spec(spec.serving, container)
    pod["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, job_name(owner.name, candidate.version, gate, baseline), labels),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(gate.timeout_seconds)),
            "template": {
                "metadata": {
                    "labels": {**spec.serving.pod.labels, **labels},
                    "annotations": dict(spec.serving.pod.annotations),
                },
                "spec": pod,
            },
        },
    }


def _env(
    spec: ModelDeploymentSpec, gate: GateSpec, candidate: ServedVersion, baseline: str | None
) -> list[dict[str, str]]:
    env = [
        {"name": "MLFLOW_TRACKING_URI", "value": spec.registry.tracking_uri},
        {"name": "SCRATCH_DIR", "value": SCRATCH_PATH},
        {"name": "ALIASROLL_GATE_CANDIDATE_URI", "value": candidate.uri},
        {"name": "ALIASROLL_GATE_DATA_URI", "value": gate.data},
        {"name": "ALIASROLL_GATE_TARGET", "value": gate.target},
        {"name": "ALIASROLL_GATE_MODEL_TYPE", "value": gate.model_type.value},
        {"name": "ALIASROLL_GATE_THRESHOLDS", "value": json.dumps(thresholds_json(gate.thresholds))},
        {"name": "ALIASROLL_GATE_DEADLINE_SECONDS", "value": str(math.ceil(gate.timeout_seconds))},
    ]
    if baseline is not None:
        env.append({"name": "ALIASROLL_GATE_BASELINE_URI", "value": f"models:/{candidate.model}/{baseline}"})
    if gate.dry_run:
        env.append({"name": "ALIASROLL_GATE_DRY_RUN", "value": "true"})
    return env


def thresholds_json(thresholds: tuple[Threshold, ...]) -> dict[str, dict[str, Any]]:
    """The thresholds as the evaluator reads them: MLflow's MetricThreshold fields, per metric."""
    result: dict[str, dict[str, Any]] = {}
    for threshold in thresholds:
        bounds = {
            "greaterIsBetter": threshold.higher_is_better,
            "threshold": threshold.threshold,
            "minAbsoluteChange": threshold.min_absolute_change,
            "minRelativeChange": threshold.min_relative_change,
        }
        result[threshold.metric] = {key: value for key, value in bounds.items() if value is not None}
    return result


def _settings(gate: GateSpec) -> dict[str, Any]:
    return {
        "data": gate.data,
        "target": gate.target,
        "modelType": gate.model_type.value,
        "thresholds": thresholds_json(gate.thresholds),
        "timeout": gate.timeout_seconds,
        "dryRun": gate.dry_run,
    }


# ------------------------------------------------------------------------------------ the verdict


def verdict(job: str, message: str | None, *, gate: GateSpec, deadline_exceeded: bool) -> GateResult:
    """What a finished Job says. `message` is its evaluator's termination message (None: none was
    written); `deadline_exceeded`: the Job ended past activeDeadlineSeconds."""
    if message is None or not message.strip():
        return GateResult(
            job=job, verdict=Verdict.ERROR, reason=JOB_DEADLINE if deadline_exceeded else JOB_KILLED
        )
    unreadable = GateResult(job=job, verdict=Verdict.ERROR, reason=UNREADABLE)
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        return unreadable
    try:
        body = json.loads(message)
    except ValueError:
        return unreadable
    if not isinstance(body, Mapping):
        return unreadable
    try:
        said = Verdict(str(body.get("verdict")))
    except ValueError:
        return unreadable
    reason = body.get("reason")
    if said is Verdict.PASSED:
        reason = "ThresholdsMet"
    elif reason not in REASONS:
        return unreadable
    named = {threshold.metric for threshold in gate.thresholds}
    metrics = tuple(_metrics(body.get("metrics"), named))
    if said is Verdict.FAILED and not any(not metric.ok for metric in metrics):
        return unreadable  # a failure that names no failed metric of the spec's says nothing checkable
    if said is Verdict.PASSED and {metric.metric for metric in metrics if metric.ok} != named:
        return unreadable  # a pass must have judged every metric the spec named
    return GateResult(
        job=job, verdict=said, reason=str(reason), metrics=metrics, run_id=_run_id(body.get("runId"))
    )


def _metrics(raw: object, named: set[str]) -> list[GateMetric]:
    if not isinstance(raw, list):
        return []
    found: dict[str, GateMetric] = {}
    for item in raw[: len(named) * 2]:
        if (
            not isinstance(item, Mapping)
            or item.get("name") not in named
            or not isinstance(item.get("ok"), bool)
        ):
            continue
        name = str(item["name"])
        found.setdefault(
            name,
            GateMetric(
                metric=name,
                candidate=_number(item.get("candidate")),
                baseline=_number(item.get("baseline")),
                bound=_number(item.get("bound")),
                ok=item["ok"],
            ),
        )
    return list(found.values())


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _run_id(value: object) -> str | None:
    """An MLflow run id: hex digits, or nothing."""
    if isinstance(value, str) and 0 < len(value) <= 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _metric_text(metric: GateMetric) -> str:
    def show(value: float | None) -> str:
        return "?" if value is None else f"{value:.4g}"

    extra = [f"production {show(metric.baseline)}"] if metric.baseline is not None else []
    extra.append(f"bound {show(metric.bound)}")
    return f"{metric.metric} {show(metric.candidate)} ({', '.join(extra)})"
