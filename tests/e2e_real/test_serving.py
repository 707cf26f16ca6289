"""Serving claims, measured on real pods of the serving image built from serving-image/Dockerfile.

The operator runs inside the real node's network namespace, as it would inside a cluster: the API
server and the MLflow server (on the host's loopback) are bridged in, so one tracking URI works for
the operator and for the pods. Requests go through the Service's ClusterIP from inside the
namespace; answers are told apart by their X-Model-Version header.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import condition, wait_for
from realstack import RealStack


def test_the_seed_workflow_on_real_pods(stack: RealStack) -> None:
    """register.py's v1 at @production answers through the Service from a container that is not
    root, cannot write its root filesystem and has no ServiceAccount token; v2 answers once
    registered; @production moved back, v1 answers again."""
    v1 = stack.register("v1", alias="production")
    stack.deploy()
    stack.ready(v1)
    assert {pod["spec"]["nodeName"] for pod in stack.pods()} == {stack.node.name}

    answer, version = stack.ask()
    great, terrible = answer["predictions"]
    assert version == v1
    assert great > 0.9
    assert terrible < 0.1

    pod = stack.pods("aliasroll.io/track=production")[0]["metadata"]["name"]

    def inside(script: str) -> str:
        argv = ["exec", "-n", stack.namespace, pod, "--", "sh", "-c", script]
        return str(stack.cluster.kubectl(*argv).stdout.strip())

    assert inside("id -u") == "10001"
    refused = inside("touch /probe 2>&1 || echo refused")
    assert "Read-only file system" in refused
    assert refused.endswith("refused")
    assert (
        inside("test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes || echo no") == "no"
    )
    assert inside("touch /scratch/probe && echo ok") == "ok"

    v2 = stack.register("v2", alias="production")
    stack.ready(v2)
    wait_for(lambda: stack.ask()[1] == v2, timeout=30, what=f"answers from {v2}")
    stack.point("production", v1)
    stack.ready(v1)
    wait_for(lambda: stack.ask()[1] == v1, timeout=30, what=f"answers from {v1} again")


def test_the_split_measured_by_answers(stack: RealStack) -> None:
    """2,400 requests (200/s, each on a new connection) per split; the canary's share of the answers."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2", alias="canary")
    manifest = stack.deploy(replicas=10, canary={"alias": "canary", "weight": 20})
    stack.ready(v1, v2, timeout=400)

    def canary_share(name: str) -> tuple[float, int]:
        with stack.load(name, rate=200, seconds=12) as load:
            load.finish()
        answers = load.answers()
        assert len(answers) >= 2000
        assert all(a["status"] == 200 for a in answers), Counter(a["status"] for a in answers)
        return 100 * sum(a["version"] == v2 for a in answers) / len(answers), len(answers)

    share, count = canary_share("split20")
    print(f"weight 20 over 10 replicas: canary share {share:.1f}% of {count} answers")
    assert 17 <= share <= 23, f"canary share {share:.1f}% of {count} answers (asked 20%)"

    # Weight 5 over 20 replicas: one canary pod of twenty.
    manifest["spec"].update(replicas=20, canary={"alias": "canary", "weight": 5})
    stack.apply(manifest)
    stack.ready(
        v1,
        v2,
        timeout=400,
        also=lambda found: (
            found["status"]["canary"]["availableReplicas"] == 1
            and found["status"]["production"]["availableReplicas"] == 19
        ),
    )
    share, count = canary_share("split5")
    print(f"weight 5 over 20 replicas: canary share {share:.1f}% of {count} answers")
    assert 3 <= share <= 7, f"canary share {share:.1f}% of {count} answers (asked 5%)"


@dataclass(frozen=True)
class Transition:
    """One change made under load, the versions serving once it is done, and the versions an answer
    may come from while it happens."""

    name: str
    act: Callable[[], object]
    production: str
    canary: str | None
    allowed: set[str]
    weight: int | None = None  # the canary weight the status must report, when only the weight moves

    def weight_in_status(self, found: dict[str, Any]) -> bool:
        asked = found["status"].get("traffic", {}).get("requestedCanaryWeight")
        return self.weight is None or asked == self.weight


def test_no_request_fails_through_any_transition(stack: RealStack) -> None:
    """A steady 60 requests/s through the Service while production rolls forward and back, a canary
    starts, changes weight, ends, and is promoted: every answer is a 200 from a version that was
    serving during that transition. Each load starts before its change and runs until the pods the
    change replaced are gone."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2")
    v3 = stack.register("v1")
    manifest = stack.deploy(replicas=3)
    stack.ready(v1)

    def set_canary(weight: int) -> None:
        manifest["spec"]["canary"] = {"alias": "canary", "weight": weight}
        stack.apply(manifest)

    transitions = [
        Transition("roll forward", lambda: stack.point("production", v2), v2, None, {v1, v2}),
        Transition("roll back", lambda: stack.point("production", v1), v1, None, {v1, v2}),
        Transition("canary start", lambda: (stack.point("canary", v3), set_canary(30)), v1, v3, {v1, v3}),
        Transition("weight up", lambda: set_canary(70), v1, v3, {v1, v3}, weight=70),
        Transition("canary end", lambda: set_canary(0), v1, None, {v1, v3}),
        Transition("canary again", lambda: set_canary(30), v1, v3, {v1, v3}),
        Transition("promotion", lambda: stack.point("production", v3), v3, None, {v1, v3}),
    ]
    report: list[str] = []
    for step in transitions:
        started = time.monotonic()
        with stack.load(step.name.replace(" ", "-"), rate=60) as load:
            load.running()
            step.act()
            stack.ready(step.production, step.canary, also=step.weight_in_status)
            stack.old_pods_gone()
        answers = load.answers()
        failed = [a for a in answers if a["status"] != 200]
        versions = Counter(a.get("version") for a in answers)
        report.append(
            f"{step.name}: {len(answers)} answers in {time.monotonic() - started:.0f} s, "
            f"{len(failed)} failed, versions {dict(versions)}"
        )
        assert len(answers) >= 300, report[-1]
        assert not failed, f"{step.name}: {failed[:5]}\n" + "\n".join(report)
        assert set(versions) <= step.allowed, (
            f"{step.name}: answers from {set(versions) - step.allowed}\n" + "\n".join(report)
        )
    print("\n".join(report))


def test_a_version_that_cannot_load_never_takes_traffic(stack: RealStack) -> None:
    v1 = stack.register("v1", alias="production")
    stack.deploy(replicas=2)
    broken = stack.register_unloadable()  # while v1's pods start
    stack.ready(v1)

    def stalled() -> dict[str, Any] | None:
        found = stack.resource()
        return found if condition(found, "Ready") == ("False", "RolloutStalled") else None

    with stack.load("broken", rate=60) as load:
        load.running()
        stack.point("production", broken)
        resource = wait_for(stalled, timeout=180, what="Ready=False/RolloutStalled")
    answers = load.answers()
    assert len(answers) >= 300
    assert all(a["status"] == 200 and a["version"] == v1 for a in answers), Counter(
        (a["status"], a.get("version")) for a in answers
    )
    message = next(c["message"] for c in resource["status"]["conditions"] if c["type"] == "Ready")
    assert broken in message
    assert resource["status"]["production"]["version"] == broken, "the Deployment pins the new version"
