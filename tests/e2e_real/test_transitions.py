"""No failed request, on real pods, while production rolls forward and back, and while a canary
starts, changes weight, ends and is promoted (see realstack.py for how requests are sent and
counted). Two tests, so each stays well inside pytest's 10 minutes on a loaded machine."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from realstack import RealStack


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


def under_load(stack: RealStack, transitions: list[Transition]) -> None:
    """Each transition under a steady 60 requests/s through the Service, each on a new connection:
    the load starts before the change and runs until the pods the change replaced are gone. Every
    answer must be a 200 from a version allowed then."""
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
        print(report[-1], flush=True)
        assert len(answers) >= 300, report[-1]
        assert not failed, f"{step.name}: {failed[:5]}\n" + "\n".join(report)
        assert set(versions) <= step.allowed, (
            f"{step.name}: answers from {set(versions) - step.allowed}\n" + "\n".join(report)
        )


def test_no_request_fails_while_production_rolls_forward_and_back(stack: RealStack) -> None:
    """@production moves from v1 to v2, then back to v1."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v2")
    stack.deploy(replicas=3)
    stack.ready(v1)
    under_load(
        stack,
        [
            Transition("roll forward", lambda: stack.point("production", v2), v2, None, {v1, v2}),
            Transition("roll back", lambda: stack.point("production", v1), v1, None, {v1, v2}),
        ],
    )


def test_no_request_fails_through_a_canarys_life(stack: RealStack) -> None:
    """A canary starts, its weight goes up, it ends, starts again and is promoted."""
    v1 = stack.register("v1", alias="production")
    v2 = stack.register("v1")
    manifest = stack.deploy(replicas=3)
    stack.ready(v1)

    def set_canary(weight: int) -> None:
        manifest["spec"]["canary"] = {"alias": "canary", "weight": weight}
        stack.apply(manifest)

    under_load(
        stack,
        [
            Transition("canary start", lambda: (stack.point("canary", v2), set_canary(30)), v1, v2, {v1, v2}),
            Transition("weight up", lambda: set_canary(70), v1, v2, {v1, v2}, weight=70),
            Transition("canary end", lambda: set_canary(0), v1, None, {v1, v2}),
            Transition("canary again", lambda: set_canary(30), v1, v2, {v1, v2}),
            Transition("promotion", lambda: stack.point("production", v2), v2, None, {v1, v2}),
        ],
    )
