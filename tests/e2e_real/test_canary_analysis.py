"""The watched canary on real pods, judged by the serving pods' own /metrics under real traffic: a
good canary goes through three steps and is promoted by the operator in MLflow; a canary that fails
on a share of requests, and one that answers 250 ms slower, are each aborted in their first step
while production answers every request; a canary without traffic holds its step as Inconclusive."""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness import wait_for
from realstack import NAME, RealStack

from support.answers import log_misbehaving


def register_misbehaving(stack: RealStack, **config: float) -> str:
    """A version that answers 0.5 to everything, raising on `fail_share` of the requests or
    `delay_seconds` late, as its model_config says."""
    return log_misbehaving(stack.mlflow.url, stack.model, **config)


def canary_status(stack: RealStack, name: str = NAME) -> dict[str, Any]:
    """The canary's run: status.canary while it runs; once it ended, the record in status.lastCanary
    (status.canary keeps only the ended run's phase while its pods drain, and goes with them)."""
    status = (stack.kube.get("mdep", name, stack.namespace) or {}).get("status", {})
    running = dict(status.get("canary") or {})
    if running.get("phase") in (None, "Aborted", "Succeeded"):
        return dict(status.get("lastCanary") or running)
    return running


def version_tags(stack: RealStack, version: str) -> dict[str, str]:
    return dict(stack.registry.get_model_version(stack.model, version).tags)


def outcome_tags(stack: RealStack, version: str, name: str = NAME) -> dict[str, str]:
    """The version's tags once the resource says its records are written (they follow the rollout,
    one call each) and its canary's outcome is among them."""

    def recorded() -> bool:
        found = stack.kube.get("mdep", name, stack.namespace) or {}
        conditions = found.get("status", {}).get("conditions") or ()
        return any(c["type"] == "Recorded" and c["status"] == "True" for c in conditions)

    def written() -> dict[str, str] | None:
        tags = version_tags(stack, version) if recorded() else {}
        return tags if "aliasroll.io/canary.outcome" in tags else None

    return wait_for(
        written,
        timeout=60,
        what=f"{name}: Recorded=True and version {version}'s canary outcome tags",
    )


def test_a_good_canary_goes_through_three_steps_and_is_promoted(stack: RealStack) -> None:
    v1 = stack.register("v1", alias="production")
    # Two replicas: every step runs one canary pod beside one production pod (the replicas router's
    # finest split of two), so the steps cost their durations, not new pods.
    stack.deploy(
        replicas=2,
        canary={
            "alias": "canary",
            "steps": [
                {"weight": 25, "duration": "6s"},
                {"weight": 50, "duration": "6s"},
                {"weight": 75, "duration": "6s"},
            ],
            "analysis": {
                "interval": "3s",
                "minRequests": 10,
                "errorRate": {"maxPercent": 1},
                "latencyP99": {"maxMilliseconds": 2000},
            },
            "promotion": "auto",
        },
    )
    stack.ready(v1)
    v2 = stack.register("v2")
    with stack.load("good-canary", rate=40) as load:
        load.running()
        stack.point("canary", v2)
        wait_for(
            lambda: stack.registry.get_registered_model(stack.model).aliases.get("production") == v2,
            timeout=300,
            what=f"@production moved to {v2} by the operator",
        )
        # No canary runs: status names none; the ended run's record is status.lastCanary until @canary moves.
        stack.ready(
            v2, also=lambda found: (found["status"].get("lastCanary") or {}).get("phase") == "Succeeded"
        )
        stack.old_pods_gone()
    answers = load.answers()
    assert all(a["status"] == 200 for a in answers), Counter(a["status"] for a in answers)
    assert {a["version"] for a in answers} == {v1, v2}
    events = [reason for _, reason, _ in stack.kube.events(stack.namespace, NAME)]
    assert events.count("CanaryStep") == 3, events
    assert "AliasMoved" in events
    tags = outcome_tags(stack, v2)
    assert tags["aliasroll.io/canary.outcome"] == "promoted"
    assert "verdict=Passed" in tags["aliasroll.io/canary.analysis.errorRate"]


def test_bad_canaries_are_aborted_in_their_first_step_and_a_starved_one_holds(stack: RealStack) -> None:
    """Three ModelDeployments of one model side by side: production (v1) answers for each; the
    canaries are a version failing 40% of its requests, one 250 ms slower, and a good one that
    gets no traffic at all."""
    v1 = stack.register("v1", alias="production")
    failing = register_misbehaving(stack, fail_share=0.4)
    slow = register_misbehaving(stack, delay_seconds=0.25)
    starved = stack.register("v2")
    analysis = {
        "interval": "3s",
        "minRequests": 15,
        "failureLimit": 1,
        "errorRate": {"maxPercent": 5},
        "latencyP99": {"maxMilliseconds": 150},
    }
    # The bad ones' first step is long: they must be caught in it. The starved one's is short: its
    # time is up long before the test looks, and it still holds.
    long_steps = [{"weight": 50, "duration": "5m"}, {"weight": 100, "duration": "5m"}]
    short_steps = [{"weight": 50, "duration": "3s"}, {"weight": 100, "duration": "3s"}]
    names = {"failing": failing, "slow": slow, "starved": starved}
    for name, version in names.items():
        stack.point(f"canary-{name}", version)
        steps = short_steps if name == "starved" else long_steps
        manifest = stack.manifest(
            replicas=2, canary={"alias": f"canary-{name}", "steps": steps, "analysis": analysis}
        )
        manifest["metadata"]["name"] = name
        stack.apply(manifest)

    def address(name: str) -> str:
        service = stack.kube.get("service", name, stack.namespace)
        assert service is not None
        return str(service["spec"]["clusterIP"])

    def aborted(name: str) -> dict[str, Any] | None:
        found = canary_status(stack, name)
        return found if found.get("phase") == "Aborted" else None

    wait_for(
        lambda: all(canary_status(stack, name).get("phase") == "Analyzing" for name in names),
        timeout=300,
        what="three canaries at their first step",
    )
    with (
        stack.load_at(address("failing"), "failing", rate=40) as failing_load,
        stack.load_at(address("slow"), "slow", rate=40) as slow_load,
    ):
        for name in ("failing", "slow"):
            record = wait_for(lambda n=name: aborted(n), timeout=120, what=f"the {name} canary aborted")
            assert record["step"] == "1/2", f"{name}: aborted in its first step"
        for name in ("failing", "slow"):  # its pods go as production's come back (capacity holds)
            wait_for(
                lambda n=name: stack.kube.get("deployment", f"{n}-canary", stack.namespace) is None,
                timeout=180,
                what=f"the {name} canary's Deployment gone",
            )
        stack.old_pods_gone()
    for name, load, metric in (("failing", failing_load, "errorRate"), ("slow", slow_load, "latencyP99")):
        answers = load.answers()
        production = [a for a in answers if a.get("version") == v1]
        assert production, f"{name}: production answered"
        assert all(a["status"] == 200 for a in production), Counter(a["status"] for a in production)
        record = canary_status(stack, name)
        failed = [m for m in record["analysis"]["metrics"] if m["verdict"] == "Failed"]
        # The failing canary's 500s may be slow too; the slow one never fails a request.
        assert metric in [m["metric"] for m in failed], record
        if name == "slow":
            assert [m["metric"] for m in failed] == ["latencyP99"], record
        found = stack.kube.get("mdep", name, stack.namespace) or {}
        healthy = next(c for c in found["status"]["conditions"] if c["type"] == "CanaryHealthy")
        assert (healthy["status"], healthy["reason"]) == ("False", "CanaryAborted")
        assert ("error rate" if metric == "errorRate" else "p99 latency") in healthy["message"], healthy
        assert outcome_tags(stack, names[name], name)["aliasroll.io/canary.outcome"] == "aborted"
    assert stack.registry.get_registered_model(stack.model).aliases["production"] == v1

    starved_now = canary_status(stack, "starved")
    assert (starved_now["phase"], starved_now["step"]) == ("Analyzing", "1/2"), starved_now
    assert starved_now["analysis"]["verdict"] == "Inconclusive", starved_now
    assert starved_now["analysis"]["failures"] == 0
    assert starved_now["message"].startswith("holding step 1"), starved_now
