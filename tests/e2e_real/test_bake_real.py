"""The bake window (spec.rollback.bake, docs/rollback.md "Bake window") on real pods, judged by the
serving pods' own /metrics under real traffic through the Service: @production moves from a good
version to one that fails a share of its requests; the bake fails, the operator moves @production
back in MLflow, and version mode rolls back by the fast path (gates only, no pod created), so every
answer comes from the good version again within an analysis interval and a couple of seconds.

It runs in the tier with the other serving tests (tests/e2e_real, hack/tiers.py); its figures
print with -s:

    ALIASROLL_REQUIRE_REAL_NODE=1 ALIASROLL_E2E_REAL_RUN=real-bake \\
        .venv/bin/pytest tests/e2e_real/test_bake_real.py -q -s -p no:cacheprovider
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import closing
from datetime import datetime
from typing import Any

from harness import Kube, wait_events, wait_for
from realstack import NAME, RealStack
from test_canary_analysis import register_misbehaving

from support.answers import FirstSeen, Stream

RATE = 40.0  # requests per second through the Service, each on a new connection
FAIL_SHARE = 0.3  # of v2's answers, a deliberate 500
# The bake's durations are the only fields not at what users get: the docs' example bakes for 10m and
# reads every 30s, which would put minutes of waiting into the tier for nothing more proved. Here a
# reading every 5s, a failure at the first failed one, and a duration far longer than it takes the
# bake to fail (so it cannot pass first). Everything else is the default: spec.registry.pollInterval
# (30s: the human's move forward is seen by the poll, the operator's move back is its own write),
# replicas 2, the analysis' other fields and version mode's window as the docs show it.
INTERVAL = 5
BAKE = {
    "duration": "60s",
    "analysis": {
        "interval": f"{INTERVAL}s",
        "failureLimit": 1,
        "minRequests": 10,
        "errorRate": {"maxPercent": 5},
    },
}


def pod_uids(stack: RealStack, version: str | None = None) -> dict[str, str]:
    """name -> uid of the resource's pods that are not stopping (of one version's Deployment)."""
    selector = f"aliasroll.io/modeldeployment={NAME}"
    if version is not None:
        selector = f"aliasroll.io/workload={NAME}-v{version}"
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]
        for p in stack.pods(selector)
        if not p["metadata"].get("deletionTimestamp")
    }


def bake_states(kube: Kube, namespace: str) -> FirstSeen:
    """status.bake read 10 times a second (a client and a thread of their own): the moment each of
    its states was first seen."""

    def read() -> dict[str, Any]:
        found = kube.get("mdep", NAME, namespace) or {}
        return dict((found.get("status") or {}).get("bake") or {})

    return FirstSeen(
        read,
        {
            "started": lambda bake: bool(bake.get("startedAt")),
            "failed": lambda bake: bake.get("phase") == "Failed",
            "made": lambda bake: bake.get("aliasWrite") == "Made",
        },
    )


def test_a_failed_bake_moves_production_back_and_every_answer_is_v1_again(stack: RealStack) -> None:
    v1 = stack.register("v1", alias="production")
    v2 = register_misbehaving(stack, fail_share=FAIL_SHARE)
    manifest = stack.manifest(replicas=2, rollback={"window": "30m", "bake": BAKE})
    manifest["spec"]["registry"] = {"trackingUri": stack.tracking_uri}  # the default poll interval
    stack.apply(manifest)
    stack.ready(v1)
    v1_pods = pod_uids(stack, v1)
    assert len(v1_pods) == 2, v1_pods
    wall_minus_monotonic = time.time() - time.monotonic()

    with (
        closing(Kube(stack.cluster)) as kube,
        Stream(stack.node, stack.address, stack.tmp / "bake.jsonl", rate=RATE) as stream,
        bake_states(kube, stack.namespace) as watcher,
    ):
        stack.point("production", v2)
        wait_events(stack.kube, stack.namespace, NAME, "BakeStarted", timeout=120)
        wait_for(lambda: "started" in watcher.first, timeout=240, what="v2 taking every request (startedAt)")
        before_rollback = pod_uids(stack)
        found = wait_for(
            lambda: (
                (stack.resource() or {}).get("status", {}).get("bake", {}).get("phase") == "Failed"
                and stack.resource()
            ),
            timeout=90,
            what="the bake Failed",
        )
        wait_for(
            lambda: stack.registry.get_registered_model(stack.model).aliases.get("production") == v1,
            timeout=30,
            what=f"@production back at {v1} in MLflow",
        )
        events = wait_events(stack.kube, stack.namespace, NAME, "BakeFailed", "FastRollback", timeout=60)
        stack.ready(v1)
        # The answers after the rollback: every one from v1 for 5 s is enough to see the last of v2.
        wait_for(
            lambda: (
                (tail := [a for a in stream.read() if a["t"] > time.monotonic() - 5])
                and all(a["version"] == v1 for a in tail)
            ),
            timeout=60,
            what="5 s of answers all from v1",
        )
        time.sleep(2)
    answers = stream.read()

    bake = found["status"]["bake"]
    assert (bake["version"], bake["previous"], bake["phase"]) == (v2, v1, "Failed"), bake
    failed = [m["metric"] for m in bake["metrics"] if m["verdict"] == "Failed"]
    assert failed == ["errorRate"], bake
    messages = [message for _, reason, message in events if reason == "BakeFailed"]
    assert len(messages) == 1, messages
    assert "error rate" in messages[0], messages
    assert f"version {v2}" in messages[0], messages
    assert stack.registry.get_registered_model(stack.model).aliases["production"] == v1

    counts = Counter((a.get("version"), a["status"]) for a in answers)
    others = {key: n for key, n in counts.items() if key not in {(v1, 200), (v2, 200), (v2, 500)}}
    assert not others, f"requests failing other than v2's deliberate 500s: {others} of {counts}"
    assert counts[(v2, 500)], counts

    assert pod_uids(stack, v1) == v1_pods, "v1's pods were replaced"
    after = pod_uids(stack)
    assert set(after.values()) <= set(before_rollback.values()), (
        f"pods created by the rollback: {set(after) - set(before_rollback)}"
    )

    # The times, on this process's CLOCK_MONOTONIC (the load's and the watcher's clock).
    started = watcher.first["started"]  # status.bake.startedAt first seen: v2 took every request
    first_possible = started + INTERVAL  # the baseline is read then; the first measurement an interval on
    failed_seen = watcher.first["failed"]  # status.bake.phase Failed first seen
    made_seen = watcher.first.get("made", float("nan"))  # aliasWrite Made first seen
    measured = datetime.fromisoformat(bake["measuredAt"].replace("Z", "+00:00")).timestamp()
    measured_mono = measured - wall_minus_monotonic  # whole seconds: up to 1 s early
    event = next(
        e
        for e in stack.kube.list("events", stack.namespace)
        if e["reason"] == "BakeFailed" and e["involvedObject"].get("name") == NAME
    )
    # The event's name is "<resource>.<time_ns, hex><4 hex digits>" (kube/events.py): when it was posted.
    posted = int(event["metadata"]["name"].rsplit(".", 1)[1][:-4], 16) / 1e9 - wall_minus_monotonic
    from_v2 = [a for a in answers if a["version"] == v2]
    last_v2 = from_v2[-1]["t"]
    last_v2_end = last_v2 + from_v2[-1]["ms"] / 1000
    v2_after = [a for a in answers if a["t"] > started]
    since = {
        "the first measurement that could have failed": last_v2 - first_possible,
        "status.bake Failed seen": last_v2 - failed_seen,
        "BakeFailed posted": last_v2 - posted,
    }
    fast = [message for _, reason, message in events if reason == "FastRollback"]
    print(
        f"\nbake of v{v2} (fail_share {FAIL_SHARE}) at {RATE:g} req/s, interval {INTERVAL}s, failureLimit 1:"
        f"\n  answers (version, status): {dict(counts)}"
        f"\n  v2's 500s while it took every request: "
        f"{sum(a['status'] == 500 for a in v2_after if a['version'] == v2)}/"
        f"{sum(a['version'] == v2 for a in v2_after)}"
        f"\n  t=0: status.bake.startedAt ({bake['startedAt']}) first seen, v2 taking every request"
        f"\n  first measurement that could have failed (t=0 + interval): {first_possible - started:+.2f} s"
        f"\n  status.bake.measuredAt {bake['measuredAt']}: {measured_mono - started:+.2f} s (whole"
        f" seconds: up to 1 s later), failures {bake['failures']}"
        f"\n  status.bake Failed first seen {failed_seen - started:+.2f} s; BakeFailed posted"
        f" {posted - started:+.2f} s; aliasWrite Made seen {made_seen - started:+.2f} s"
        f"\n  last answer from v2: sent {last_v2 - started:+.2f} s, answered {last_v2_end - started:+.2f} s"
        f"\n  last answer from v2 (sent) after: "
        + ", ".join(f"{what} {seconds:.2f} s" for what, seconds in since.items())
        + f"\n  events: {[reason for _, reason, _ in events]}\n  FastRollback: {fast}"
    )
    assert last_v2 - first_possible <= INTERVAL + 2, (
        f"the last answer from v2 came {last_v2 - first_possible:.2f} s after the first measurement that "
        f"could have failed (bound {INTERVAL + 2} s)"
    )
