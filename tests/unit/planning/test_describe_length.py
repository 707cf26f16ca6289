"""`kubectl describe mdep` stays within a screen or two: the status the planner writes after a long
life (two dozen rollouts, a rollback, a watched canary with an analysis) is counted the way kubectl
prints it (its generic describer: one line per field, map and list, items run together).

Before the history was bounded per track (it kept 20 spans of 6 fields: 121 lines) and an ended
canary run was kept out of status.canary, the same resource took 258 lines mid-analysis and 255
after the promotion, events not counted; now 178 and 169 (a run names its model, where production
was when it began, and the window its last measurement judged: what keeps a rename from continuing
another model's run, a human's move of production from being overwritten, and a step from passing
on a measurement of the step before).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from builders import NOW, OWNER, observed, view, workload

from aliasroll.analysis.judge import Limits, judge
from aliasroll.analysis.window import Window
from aliasroll.planning.canary import AnalysisResult
from aliasroll.planning.planner import plan, with_records
from aliasroll.planning.workloads import WorkloadDefaults
from aliasroll.spec import Track, parse_spec

SPEC: dict[str, Any] = {
    "model": {"name": "sentiment", "alias": "production"},
    "registry": {"trackingUri": "http://mlflow.mlflow.svc.cluster.local:5000", "pollInterval": "30s"},
    "replicas": 4,
    "canary": {
        "alias": "canary",
        "steps": [
            {"weight": 5, "duration": "2m"},
            {"weight": 25, "duration": "5m"},
            {"weight": 50, "duration": "5m"},
        ],
        "analysis": {
            "interval": "30s",
            "minRequests": 20,
            "failureLimit": 2,
            "errorRate": {"maxPercent": 1, "maxIncreasePoints": 0.5},
            "latencyP99": {"maxMilliseconds": 500, "maxRatio": 1.5},
        },
        "promotion": "auto",
        "onAbort": "keepAlias",
    },
}
# As the API server stores it: the schema's defaults filled in.
STORED_SPEC = SPEC | {
    "serving": {"port": 8080, "scratchSize": "10Gi", "dependencies": "install"},
    "traffic": {"router": "replicas"},
    "suspend": False,
}
ROLLOUTS = ["1", "2", "3", "4", "3", *(str(version) for version in range(5, 22))]  # one rollback
ABORTED = "15"  # a canary tried (and aborted) beside production 14
CANARY = "22"
BUCKETS = ((0.1, 0.5), (0.25, 1.0), (float("inf"), 1.0))  # fractions of the requests, cumulative


# --- kubectl's generic describer (k8s.io/kubectl/pkg/describe: printUnstructuredContent) -----------


def label(field: str) -> str:
    """smartLabelFor: camelCase split into capitalised words, known acronyms upper-cased; a name
    with anything but letters and '-' (latencyP99) as it is."""
    if re.search(r"[^A-Za-z-]", field):
        return field
    words = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", field)
    return " ".join(
        word.upper() if word.upper() in ("API", "URL", "UID") else word.capitalize() for word in words
    )


def content(node: Mapping[str, Any], level: int = 0) -> list[str]:
    lines: list[str] = []
    for key in sorted(node):
        value, indent = node[key], "  " * level
        if isinstance(value, Mapping):
            lines += [f"{indent}{label(key)}:", *content(value, level + 1)]
        elif isinstance(value, list):
            lines.append(f"{indent}{label(key)}:")
            for item in value:
                lines += content(item, level + 1) if isinstance(item, Mapping) else [f"{indent}  {item}"]
        else:
            shown = str(value).lower() if isinstance(value, bool) else value  # Go prints false
            lines.append(f"{indent}{label(key)}:\t{shown}")
    return lines


def describe(status: Mapping[str, Any]) -> list[str]:
    meta = {
        "creationTimestamp": "2026-11-23T11:59:00Z",
        "generation": 3,
        "resourceVersion": "48213",
        "uid": "0b6f",
    }
    body = {"apiVersion": "aliasroll.io/v1alpha1", "kind": "ModelDeployment", "metadata": meta}
    head = ["Name:\tsentiment", "Namespace:\tml", "Labels:\t<none>", "Annotations:\t<none>"]
    return head + content(body | {"spec": STORED_SPEC, "status": status}) + ["Events:\t<none>"]


# --- a long life, pass by pass ------------------------------------------------------------------


@dataclass
class Life:
    status: dict[str, Any] = field(default_factory=dict)
    pods: dict[Track, tuple[str, int]] = field(default_factory=dict)
    seconds: int = 0

    def step(
        self,
        production: str,
        canary: str | None = None,
        *,
        measured: bool = False,
        errors: float = 0.0,
        after: int = 1,
    ) -> None:
        now = NOW + timedelta(seconds=self.seconds)
        analysis = None
        if measured:
            windows = {
                name: Window(
                    requests=requests, errors=failed, buckets=tuple((le, n * requests) for le, n in BUCKETS)
                )
                for name, requests, failed in (("canary", 120.0, errors), ("production", 2280.0, 1.0))
            }
            limits = Limits(
                20, max_error_percent=1, max_error_increase_points=0.5, max_p99_seconds=0.5, max_p99_ratio=1.5
            )
            measurement = judge(limits, canary=windows["canary"], production=windows["production"])
            analysis = AnalysisResult(version=canary or "", measured_at=now, measurement=measurement)
        result = plan(
            owner=OWNER,
            spec=parse_spec(SPEC),
            view=view(production, canary),
            observed=observed(*(workload(t, v, replicas=n) for t, (v, n) in self.pods.items())),
            previous_status=self.status,
            now=now,
            defaults=WorkloadDefaults(image="aliasroll/serving:test"),
            analysis=analysis,
        )
        self.pods = {}
        for item in result.objects:
            if item["kind"] == "Deployment":
                labels = item["spec"]["template"]["metadata"]["labels"]
                self.pods[Track(labels["aliasroll.io/track"])] = (
                    labels["aliasroll.io/model-version"],
                    item["spec"]["replicas"],
                )
        self.status = with_records(result.status, self.status, problems=[], wrote=True, owner=OWNER, now=now)
        self.seconds += after

    def phase(self) -> str:
        return str((self.status.get("canary") or {}).get("phase", ""))


def long_life(until: str) -> Life:
    life = Life()
    for version in ROLLOUTS:
        for _ in range(3):
            life.step(version, after=60)
        if version == str(int(ABORTED) - 1):
            while life.phase() != "Analyzing":
                life.step(version, ABORTED)
            while "lastCanary" not in life.status or "canary" in life.status:
                life.step(version, ABORTED, measured=True, errors=12.0, after=30)
    last = ROLLOUTS[-1]
    while life.phase() != "Analyzing":
        life.step(last, CANARY)
    while (
        life.status["canary"].get("step") != "2/3" or until != "Analyzing"
    ) and life.phase() != "Promoting":
        life.step(last, CANARY, measured=True, after=30)
    if until == "Succeeded":
        for _ in range(6):
            life.step(CANARY, CANARY, after=5)
    return life


# (until, lines in all, lines of status): ceilings at what the planner writes now. The same resource
# took 258 (status 211) and 255 (208) before; events are not counted.
@pytest.mark.parametrize(("until", "most", "most_status"), [("Analyzing", 178, 131), ("Succeeded", 169, 122)])
def test_describe_fits_a_screen_or_two(until: str, most: int, most_status: int) -> None:
    life = long_life(until)
    lines = describe(life.status)
    status = lines[lines.index("Status:") :]
    tracks = [span["track"] for span in life.status["history"]]
    assert (tracks.count("production"), tracks.count("canary")) == (4, 2)
    assert len(lines) <= most, "\n".join(lines)
    assert len(status) <= most_status, "\n".join(status)
    if until == "Succeeded":
        assert "canary" not in life.status
        assert life.status["lastCanary"]["phase"] == "Succeeded"
    else:
        assert life.status["canary"]["step"] == "2/3"
